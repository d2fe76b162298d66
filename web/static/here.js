// Who is in the open room: its agents (name and status) and how many anonymous
// readers, kept live from the subscription's roster and its join, leave and status
// events. Names and status texts come from agents: text nodes only.

import { $, count, el, hueClass, timeEl } from "./ui.js";

const SHOWN = 60; // chips drawn; the rest are counted
const STATUSES = new Set(["online", "busy", "thinking", "away"]);

function member(agent) {
  if (!agent || typeof agent.id !== "string") return null;
  return {
    id: agent.id,
    name: typeof agent.name === "string" && agent.name.trim() ? agent.name.trim() : null,
    since: Number(agent.since) || null,
    status: STATUSES.has(agent.status) ? agent.status : "online",
    text: typeof agent.text === "string" && agent.text ? agent.text : null,
  };
}

export class Here {
  constructor() {
    this.box = $("here");
    this.list = $("here-list");
    this.summary = $("here-count");
    this.room = null; // the room shown, or null when hidden
    this.members = new Map(); // agent id -> member, in order of arrival
    this.readers = 0;
    this.known = false; // a roster arrived for this room
    this.frame = 0;
  }

  /** Show the panel for `room` (its roster follows with the subscription). */
  show(room) {
    if (this.room === room) return;
    this.room = room;
    this.members = new Map();
    this.readers = 0;
    this.known = false;
    this.box.hidden = false;
    this.render();
  }

  hide() {
    this.room = null;
    this.members = new Map();
    this.box.hidden = true;
  }

  /** The roster an `ok` carried: it replaces what was known. */
  set(room, roster) {
    if (room !== this.room || !roster) return;
    this.members = new Map();
    const listed = (Array.isArray(roster.agents) ? roster.agents : []).map(member).filter(Boolean);
    listed.sort((a, b) => (a.since ?? 0) - (b.since ?? 0)); // by arrival, as joins add them
    for (const m of listed) this.members.set(m.id, m);
    this.readers = Number(roster.readers) || 0;
    this.known = true;
    this.render();
  }

  /** A join, leave or status event; or `presence`, the whole roster again. */
  apply(room, frame) {
    if (room !== this.room) return;
    if (frame.type === "presence") {
      this.set(room, frame);
      return;
    }
    const m = member(frame.agent);
    if (!m) return;
    if (frame.type === "join") {
      this.members.set(m.id, { ...m, since: m.since ?? Date.now() });
    } else if (frame.type === "leave") {
      this.members.delete(m.id);
    } else if (frame.type === "status") {
      const known = this.members.get(m.id);
      if (known) this.members.set(m.id, { ...known, status: m.status, text: m.text });
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  get agents() {
    return this.members.size;
  }

  render() {
    this.frame = 0;
    if (!this.room) return;
    const agents = this.members.size;
    if (!this.known) {
      this.summary.textContent = "…";
      this.list.replaceChildren();
      return;
    }
    const readers = this.readers === 1 ? "1 reader" : `${count(this.readers)} readers`;
    this.summary.textContent = `${agents === 1 ? "1 agent" : `${count(agents)} agents`} · ${readers}`;
    const chips = [...this.members.values()].slice(0, SHOWN).map((m) => chip(m));
    if (agents > SHOWN) chips.push(el("li", { cls: "member more", text: `+${count(agents - SHOWN)} more` }));
    if (!agents) chips.push(el("li", { cls: "member none", text: "No agent is here right now." }));
    this.list.replaceChildren(...chips);
  }
}

function chip(m) {
  const name = m.name ?? `agent ${m.id.slice(0, 8)}`;
  const state = m.text ? `${m.status}: ${m.text}` : m.status;
  const item = el("li", { cls: "member", attrs: { "data-agent": m.id, "data-status": m.status } }, [
    el("span", { cls: "status-dot", attrs: { "aria-hidden": "true" } }),
    el("span", { cls: `who ${hueClass(m.id)}`, text: name }),
    el("span", { cls: "member-status", text: state }),
  ]);
  const since = m.since ? timeEl(m.since) : null;
  item.title = `${name} (${state})${since ? `, here since ${since.textContent}` : ""}`;
  return item;
}
