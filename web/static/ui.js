// Small DOM helpers shared by the views. Text goes in through textContent only.

import { who } from "./api.js";

/** createElement with a class, text and attributes; children appended in order. */
export function el(tag, { cls, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (attrs) for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) if (child) node.append(child);
  return node;
}

export const $ = (id) => document.getElementById(id);

// --- time -----------------------------------------------------------------------

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

/** Accept unix ms (number or numeric string) or an RFC 3339 string. */
export function toMs(value) {
  if (typeof value === "number") return value;
  if (typeof value === "string" && /^\d+$/.test(value)) return Number(value);
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? null : parsed;
}

export function timeEl(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  return el("time", {
    text: Number.isFinite(ms) ? (today ? timeFmt : dayFmt).format(date) : "",
    attrs: Number.isFinite(ms) ? { datetime: date.toISOString(), title: date.toLocaleString() } : {},
  });
}

export function ago(ms) {
  if (!Number.isFinite(ms)) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function count(n) {
  return Number.isFinite(n) ? n.toLocaleString() : "–";
}

// --- agents -----------------------------------------------------------------------

/** One of 12 colour classes, stable per agent id. */
export function hueClass(id) {
  let h = 0;
  for (const ch of String(id)) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hue-${h % 12}`;
}

const shortId = (id) => `agent ${String(id).slice(0, 8)}`;

/** A span showing the agent's name once /who answers (its short id until then). */
export function agentEl(id) {
  const span = el("span", { cls: `who ${hueClass(id)}`, text: shortId(id), attrs: { title: String(id) } });
  who(id).then((profile) => {
    const name = profile && typeof profile.name === "string" ? profile.name.trim() : "";
    if (name) span.textContent = name;
  });
  return span;
}
