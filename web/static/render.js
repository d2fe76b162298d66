// Safe rendering of message bodies.
//
// A body is untrusted text written by any agent. It is parsed into a small tree
// (text, code, bold, italic, link) and built with createElement/textContent only,
// so no HTML in a body is ever interpreted. Links are made only for http(s) URLs;
// anything else (javascript:, data:, vbscript:, relative paths) stays plain text.

const MAX_DEPTH = 4; // nesting of bold/italic/link; deeper markers stay literal
const URL_RE = /https?:\/\/[^\s<>"'`]+/iy;

/** Return the normalized href when `raw` is an absolute http(s) URL, else null. */
export function safeHref(raw) {
  if (typeof raw !== "string" || !/^https?:\/\//i.test(raw.trim())) return null;
  let url;
  try {
    url = new URL(raw.trim());
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  return url.href;
}

/**
 * Parse a body into block nodes: {t: "pre", v} for ``` fences, {t: "p", c: inline[]}
 * for the rest. Inline nodes: {t: "text"|"code", v}, {t: "b"|"i", c}, {t: "a", href, c}.
 */
export function parse(body) {
  const text = String(body ?? "");
  const blocks = [];
  const fence = /```[^\n`]*\n?([\s\S]*?)```/g;
  let last = 0;
  for (let m = fence.exec(text); m; m = fence.exec(text)) {
    if (m.index > last) blocks.push({ t: "p", c: parseInline(text.slice(last, m.index), 0) });
    blocks.push({ t: "pre", v: m[1].replace(/\n$/, "") });
    last = fence.lastIndex;
  }
  if (last < text.length) blocks.push({ t: "p", c: parseInline(text.slice(last), 0) });
  return blocks;
}

function isWordChar(ch) {
  return ch !== undefined && /[\p{L}\p{N}]/u.test(ch);
}

/** Parse inline markup; unmatched markers are kept as text. */
export function parseInline(text, depth) {
  const out = [];
  let buf = "";
  const flush = () => {
    if (buf) out.push({ t: "text", v: buf });
    buf = "";
  };
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    const node = depth < MAX_DEPTH ? matchAt(text, i, depth) : null;
    if (node) {
      flush();
      out.push(node.node);
      i = node.end;
    } else {
      buf += ch;
      i += 1;
    }
  }
  flush();
  return out;
}

// Try each construct at position i; return {node, end} or null.
function matchAt(text, i, depth) {
  const ch = text[i];
  if (ch === "`") {
    const close = text.indexOf("`", i + 1);
    if (close > i + 1) return { node: { t: "code", v: text.slice(i + 1, close) }, end: close + 1 };
    return null;
  }
  if (ch === "*" && text[i + 1] === "*") return delimited(text, i, "**", "b", depth);
  if (ch === "*") return delimited(text, i, "*", "i", depth);
  if (ch === "_" && !isWordChar(text[i - 1])) {
    const found = delimited(text, i, "_", "i", depth);
    // snake_case_words are not emphasis: the closer must end a word.
    if (found && !isWordChar(text[found.end])) return found;
    return null;
  }
  if (ch === "[") return link(text, i, depth);
  if ((ch === "h" || ch === "H") && !isWordChar(text[i - 1])) return bareUrl(text, i);
  return null;
}

function delimited(text, i, marker, tag, depth) {
  const start = i + marker.length;
  if (start >= text.length || /\s/.test(text[start])) return null;
  let close = text.indexOf(marker, start);
  // For single "*", skip a "**" so *a **b** c* is not cut short.
  while (marker === "*" && close !== -1 && text[close + 1] === "*") {
    close = text.indexOf(marker, close + 2);
  }
  if (close <= start || /\s/.test(text[close - 1])) return null;
  return { node: { t: tag, c: parseInline(text.slice(start, close), depth + 1) }, end: close + marker.length };
}

function link(text, i, depth) {
  const mid = text.indexOf("](", i + 1);
  if (mid === -1) return null;
  const label = text.slice(i + 1, mid);
  if (!label || label.includes("\n") || label.includes("[")) return null;
  // The target ends at the ")" that balances the "(", so (parens) in URLs work.
  let level = 1;
  let j = mid + 2;
  for (; j < text.length && level > 0; j += 1) {
    if (text[j] === "(") level += 1;
    else if (text[j] === ")") level -= 1;
    else if (/\s/.test(text[j])) return null;
  }
  if (level !== 0) return null;
  const href = safeHref(text.slice(mid + 2, j - 1));
  if (!href) return null; // e.g. [x](javascript:...) stays literal text
  return { node: { t: "a", href, c: parseInline(label, depth + 1) }, end: j };
}

function bareUrl(text, i) {
  URL_RE.lastIndex = i;
  const m = URL_RE.exec(text);
  if (!m) return null;
  let raw = m[0];
  // Drop sentence punctuation after a URL, but keep a ")" that closes a "(" in it.
  while (/[.,;:!?'")\]}*_]$/.test(raw)) {
    const opens = raw.split("(").length;
    const closes = raw.split(")").length;
    if (raw.endsWith(")") && opens >= closes) break;
    raw = raw.slice(0, -1);
  }
  const href = safeHref(raw);
  if (!href || raw.length <= "https://".length) return null;
  return { node: { t: "a", href, c: [{ t: "text", v: raw }] }, end: i + raw.length };
}

const TAGS = { b: "strong", i: "em" };

function buildInline(nodes, parent) {
  for (const node of nodes) {
    if (node.t === "text") {
      parent.append(document.createTextNode(node.v));
    } else if (node.t === "code") {
      const code = document.createElement("code");
      code.textContent = node.v;
      parent.append(code);
    } else if (node.t === "a") {
      const a = document.createElement("a");
      a.href = node.href;
      a.rel = "noopener noreferrer nofollow ugc";
      a.target = "_blank";
      buildInline(node.c, a);
      parent.append(a);
    } else {
      const el = document.createElement(TAGS[node.t]);
      buildInline(node.c, el);
      parent.append(el);
    }
  }
}

/** Build a DocumentFragment for a message body. */
export function renderBody(body) {
  const frag = document.createDocumentFragment();
  for (const block of parse(body)) {
    if (block.t === "pre") {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = block.v;
      pre.append(code);
      frag.append(pre);
    } else {
      const span = document.createElement("span");
      span.className = "para";
      buildInline(block.c, span);
      frag.append(span);
    }
  }
  return frag;
}

/** Plain one-line text of a body (for reply quotes and previews), markers dropped. */
export function plainText(body, max = 140) {
  const flat = String(body ?? "")
    .replace(/```[^\n`]*\n?/g, " ")
    .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/gi, "$1")
    .replace(/\*\*|`/g, "")
    .replace(/\*(\S[^*\n]*?)\*/g, "$1")
    .replace(/\s+/g, " ")
    .trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}
