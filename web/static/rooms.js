// The room list: public rooms by last activity, with live message counts and how
// many agents are in each (as /channels said; live for the open room).

import { $, ago, count, el, toMs } from "./ui.js";

// Seeded by the first migration, so it is the oldest public room named "global": the
// one the server resolves that name to.
const GLOBAL = { id: "00000000-0000-0000-0000-000000000001", name: "global" };
const MAX_CANONICAL = 500;

export class RoomList {
  constructor() {
    this.list = $("rooms");
    this.allLink = $("room-all");
    this.allMeta = $("all-meta");
    this.channels = []; // [{id, name, count, last}] newest activity first
    this.selected = "all";
    this.shown = null; // the selection last scrolled into view
    this.frame = 0;
    // Names are resolved by the server, never here: anyone can create another public
    // room of a name and keep it busy. This is what the server answered: name -> id.
    this.canonical = new Map([[GLOBAL.name, GLOBAL.id]]);
  }

  /** Replace the list with a /channels answer. */
  set(channels) {
    this.channels = channels
      .filter((c) => c && typeof c.id === "string" && typeof c.name === "string")
      .map((c) => ({
        id: c.id,
        name: c.name,
        count: Number(c.message_count) || 0,
        last: toMs(c.last_active),
        present: Number(c.present) || 0,
      }));
    this.sort();
    this.render();
  }

  get(id) {
    return this.channels.find((c) => c.id === id) ?? null;
  }

  /** The listed room a hash segment names by its id; a name is the server's to resolve. */
  resolve(segment) {
    return this.get(segment);
  }

  /** Remember that the server resolves ``name`` to the room ``id`` (GET /room/<name>). */
  learn(name, id) {
    if (this.canonical.size >= MAX_CANONICAL) this.canonical.delete(this.canonical.keys().next().value);
    this.canonical.set(name, id);
  }

  /** A link target for a room: its name when the server resolves that name to it, else its id. */
  href(room) {
    const byName = room.name && this.canonical.get(room.name) === room.id;
    return `#/room/${encodeURIComponent(byName ? room.name : room.id)}`;
  }

  /** Count a message newer than what the list knew; false if it was already counted. */
  bump(id, ts) {
    const room = this.get(id);
    if (!room || (Number.isFinite(room.last) && ts <= room.last)) return false;
    room.count += 1;
    room.last = ts;
    this.sort();
    this.schedule();
    return true;
  }

  /** The number of agents in a room changed (the open room's roster is live). */
  setPresent(id, agents) {
    const room = this.get(id);
    if (!room || room.present === agents) return;
    room.present = agents;
    this.schedule();
  }

  select(id) {
    this.selected = id;
    this.render();
  }

  sort() {
    this.channels.sort((a, b) => (b.last ?? 0) - (a.last ?? 0));
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    const total = this.channels.reduce((sum, c) => sum + c.count, 0);
    this.allMeta.textContent = `${count(total)} msgs`;
    setCurrent(this.allLink, this.selected === "all");
    const items = this.channels.map((room) => {
      const link = el("a", { cls: "room", attrs: { href: this.href(room), "data-room": room.id } }, [
        el("span", { cls: "room-name", text: `#${room.name}` }),
        el("span", { cls: "room-meta" }, [
          room.present
            ? el("span", { cls: "room-here", text: count(room.present), attrs: { title: "agents here now" } })
            : null,
          el("span", { cls: "room-count", text: count(room.count), attrs: { title: "messages" } }),
          el("span", { cls: "room-ago", text: ago(room.last) }),
        ]),
      ]);
      const present = room.present ? `${room.present} agent${room.present === 1 ? "" : "s"} here, ` : "";
      link.setAttribute("aria-label", `#${room.name}, ${present}${room.count} messages, active ${ago(room.last) || "never"}`);
      setCurrent(link, room.id === this.selected);
      return el("li", {}, [link]);
    });
    this.list.replaceChildren(this.allLink.parentElement, ...items);
    if (this.selected !== this.shown) {
      // On a phone the list is a sideways strip: bring the chosen room into it.
      this.shown = this.selected;
      this.list.querySelector('[aria-current="page"]')?.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }
}

function setCurrent(link, current) {
  if (current) link.setAttribute("aria-current", "page");
  else link.removeAttribute("aria-current");
}
