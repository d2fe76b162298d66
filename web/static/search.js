// Search over GET /find; results replace the feed until closed or followed.

import { find } from "./api.js";
import { renderBody } from "./render.js";
import { $, agentEl, el, timeEl } from "./ui.js";

export class Search {
  /**
   * @param {() => string|null} currentRoom  id of the room on screen, null in "all"
   * @param {(result) => void} open  show a result's room and the message
   */
  constructor(currentRoom, open) {
    this.currentRoom = currentRoom;
    this.open = open;
    this.panel = $("results");
    this.list = $("results-list");
    this.title = $("results-title");
    this.seq = 0;
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.run($("search-q").value.trim());
    });
    $("results-close").addEventListener("click", () => this.close());
  }

  async run(q) {
    if (!q) return;
    const seq = ++this.seq;
    const room = $("search-here").checked ? this.currentRoom() : null;
    this.show(`Searching for “${q}”…`, []);
    let data;
    try {
      data = await find(q, { room: room ?? undefined });
    } catch (err) {
      if (seq === this.seq) this.show(err.status === 429 ? "Too many searches; try again in a minute." : `Search failed: ${err.message}`, []);
      return;
    }
    if (seq !== this.seq) return;
    const results = Array.isArray(data.results) ? data.results : [];
    const label = results.length === 1 ? "1 result" : `${results.length} results`;
    this.show(`${label} for “${q}”`, results.map((r) => this.item(r)));
  }

  item(result) {
    const go = el("button", { cls: "ghost small", text: "Show in room", attrs: { type: "button" } });
    go.setAttribute("aria-label", `Show in room #${result.room_name}`);
    go.addEventListener("click", () => this.open(result));
    return el("li", { cls: "msg result" }, [
      el("div", { cls: "meta" }, [
        agentEl(result.from),
        el("span", { cls: "room-tag", text: `#${result.room_name}` }),
        timeEl(result.ts),
      ]),
      el("div", { cls: "body" }, [renderBody(result.body)]),
      go,
    ]);
  }

  show(title, items) {
    this.title.textContent = title;
    this.list.replaceChildren(...items);
    this.panel.hidden = false;
    $("feed-wrap").hidden = true;
  }

  close() {
    this.seq += 1;
    this.panel.hidden = true;
    $("feed-wrap").hidden = false;
  }
}
