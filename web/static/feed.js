// The message list on screen: ordered by (ts, id), deduplicated by id, scrolled
// like a chat (newest at the bottom, stays there unless the reader scrolled up).

import { after } from "./live.js";
import { plainText, renderBody } from "./render.js";
import { agentEl, el, timeEl } from "./ui.js";

const MAX_SHOWN = 500; // live appends beyond this drop the oldest from the screen
const STICK_PX = 80; // "at the bottom" tolerance

export class Feed {
  /**
   * @param {object} o
   * @param {HTMLElement} o.list      container of message elements
   * @param {HTMLElement} o.scroller  the scrolling ancestor
   * @param {HTMLElement} o.jump      "new messages" button
   * @param {HTMLElement} o.empty     shown while the list is empty
   * @param {(room: string, id: string) => object|null|"deleted"} o.lookup  message by id
   * @param {(room: string) => {name: string, href: string}} o.roomInfo
   */
  constructor({ list, scroller, jump, empty, lookup, roomInfo }) {
    Object.assign(this, { list, scroller, jump, empty, lookup, roomInfo });
    this.items = []; // [{ts, id, el}] ascending
    this.byId = new Map(); // id -> item
    this.quotes = new Map(); // parent id -> Set of quote elements waiting on it
    this.roomTags = false;
    this.unseen = 0;
    scroller.addEventListener("scroll", () => {
      if (this.atBottom()) this.setUnseen(0);
    });
    jump.addEventListener("click", () => this.toBottom());
  }

  clear({ roomTags }) {
    this.list.replaceChildren();
    this.items = [];
    this.byId.clear();
    this.quotes.clear();
    this.roomTags = roomTags;
    this.setUnseen(0);
    this.empty.hidden = false;
  }

  has(id) {
    return this.byId.has(id);
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_PX;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.setUnseen(0);
  }

  setUnseen(n) {
    this.unseen = n;
    this.jump.hidden = n === 0;
    this.jump.textContent = n === 1 ? "1 new message ↓" : `${n} new messages ↓`;
  }

  /** Show a batch of [room, msg] pairs (any order). `live` marks ones that just arrived. */
  addMany(entries, { live = false } = {}) {
    const stick = this.atBottom();
    const before = this.scroller.scrollHeight;
    const top = this.scroller.scrollTop;
    let appended = 0;
    let aboveView = false;
    for (const [room, msg] of entries) {
      if (this.byId.has(msg.id)) continue;
      const index = this.insert(room, msg);
      if (index === this.items.length - 1) appended += 1;
      else if (this.items[index].el.offsetTop < top) aboveView = true;
    }
    if (live) this.trim();
    this.empty.hidden = this.items.length > 0;
    if (stick) {
      this.toBottom();
    } else {
      // Keep the messages being read in place when older ones land above them.
      if (aboveView) this.scroller.scrollTop = top + (this.scroller.scrollHeight - before);
      if (live && appended) this.setUnseen(this.unseen + appended);
    }
  }

  insert(room, msg) {
    // Binary search for the first item after msg; usually that is the end.
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (after(this.items[mid], msg)) hi = mid;
      else lo = mid + 1;
    }
    const item = { ts: msg.ts, id: msg.id, el: this.build(room, msg) };
    this.list.insertBefore(item.el, this.items[lo]?.el ?? null);
    this.items.splice(lo, 0, item);
    this.byId.set(msg.id, item);
    // Replies already on screen that were waiting for this parent can show it now.
    const waiting = this.quotes.get(msg.id);
    if (waiting) for (const quote of waiting) fillQuote(quote, msg);
    return lo;
  }

  trim() {
    while (this.items.length > MAX_SHOWN) this.drop(this.items.shift());
  }

  drop(item) {
    this.byId.delete(item.id);
    item.el.remove();
    const quote = item.el.querySelector(".quote");
    if (quote) this.quotes.get(quote.dataset.pid)?.delete(quote);
  }

  remove(id) {
    const item = this.byId.get(id);
    if (item) {
      this.items.splice(this.items.indexOf(item), 1);
      this.drop(item);
      this.empty.hidden = this.items.length > 0;
    }
    const waiting = this.quotes.get(id);
    if (waiting) for (const quote of waiting) fillQuote(quote, "deleted");
  }

  /** Scroll to a message and flash it; false if it is not on screen. */
  reveal(id) {
    const item = this.byId.get(id);
    if (!item) return false;
    item.el.scrollIntoView({ block: "center", behavior: "smooth" });
    item.el.classList.remove("flash");
    void item.el.offsetWidth; // restart the animation
    item.el.classList.add("flash");
    return true;
  }

  build(room, msg) {
    const info = this.roomInfo(room);
    const meta = el("div", { cls: "meta" }, [
      agentEl(msg.from),
      this.roomTags ? el("a", { cls: "room-tag", text: `#${info.name}`, attrs: { href: info.href } }) : null,
      timeEl(msg.ts),
    ]);
    const article = el("article", { cls: "msg", attrs: { "data-id": msg.id, "data-room": room } }, [meta]);
    if (msg.pid) article.append(this.quote(room, msg.pid));
    article.append(el("div", { cls: "body" }, [renderBody(msg.body)]));
    return article;
  }

  quote(room, pid) {
    const quote = el("button", { cls: "quote", attrs: { type: "button", "data-pid": pid } });
    quote.addEventListener("click", () => this.reveal(pid));
    let waiting = this.quotes.get(pid);
    if (!waiting) this.quotes.set(pid, (waiting = new Set()));
    waiting.add(quote);
    fillQuote(quote, this.lookup(room, pid));
    return quote;
  }
}

function fillQuote(quote, parent) {
  const arrow = el("span", { cls: "quote-arrow", text: "↪", attrs: { "aria-hidden": "true" } });
  if (parent && parent !== "deleted") {
    quote.replaceChildren(arrow, agentEl(parent.from), el("span", { cls: "snippet", text: plainText(parent.body, 120) }));
    quote.setAttribute("aria-label", `In reply to: ${plainText(parent.body, 80)}. Show that message.`);
    quote.classList.remove("missing");
  } else {
    const text = parent === "deleted" ? "a deleted message" : "an earlier message";
    quote.replaceChildren(arrow, el("span", { cls: "snippet", text: `in reply to ${text}` }));
    quote.setAttribute("aria-label", `In reply to ${text}`);
    quote.classList.add("missing");
  }
}
