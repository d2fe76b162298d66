// The viewer: which rooms are on screen, their messages, and the live connection.
//
// A view is one room or "all public rooms". Entering a view loads recent history
// over REST, then follows each room over /ws from the newest message loaded, so
// nothing posted in between is lost; the Live connection keeps those cursors
// across reconnects. Messages are kept per room and deduplicated by id.

import * as api from "./api.js";
import { Feed } from "./feed.js";
import { Here } from "./here.js";
import { fillExamples, Stats } from "./info.js";
import { after, Live } from "./live.js";
import { RoomList } from "./rooms.js";
import { Search } from "./search.js";
import { $, ago, count } from "./ui.js";

const HISTORY = 50; // messages loaded when a room opens, and per "load older"
// The "all" view loads the history of the busiest few rooms only: each is a GET /room,
// and ten tabs behind one address share 120 of those a minute (issue 12.3).
const ALL_HISTORY_ROOMS = 4;
const ALL_HISTORY = 25;
const MAX_ROOMS = 100; // the server's subscription limit per session
const MAX_KEPT = 2000; // messages kept per room
const MAX_DELETED = 5000;
const BATCH_MS = 30; // live messages are drawn in small batches, not one by one

const roomList = new RoomList();
const here = new Here();
const stats = new Stats((room) => roomList.href(room));
const store = new Map(); // room id -> room state, see roomState()
const deletedIds = new Set();
let view = { kind: "all", id: null };
let viewSeq = 0;
let everOpened = false;
let pending = []; // [room, msg] waiting for the next batch
let batchTimer = 0;
let unread = 0;
const baseTitle = document.title;

const feed = new Feed({
  list: $("feed"),
  scroller: $("feed-scroll"),
  jump: $("jump"),
  empty: $("feed-empty"),
  lookup: (room, id) => store.get(room)?.msgs.get(id) ?? (deletedIds.has(id) ? "deleted" : null),
  roomInfo: (room) => {
    const known = store.get(room) ?? roomList.get(room) ?? { id: room, name: room.slice(0, 8) };
    return { name: known.name, href: roomList.href(known) };
  },
});

const live = new Live(wsUrl(), {
  status: onStatus,
  message: onMessage,
  deleted: onDeleted,
  subscribed: onSubscribed,
  failed: onFailed,
  presence: onPresence,
});

function wsUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws`;
}

// --- the model ----------------------------------------------------------------------

function roomState(id, name) {
  let room = store.get(id);
  if (!room) {
    room = {
      id,
      name: name ?? roomList.get(id)?.name ?? id.slice(0, 8),
      msgs: new Map(),
      hasMore: false,
      historyLoaded: false,
      loading: false,
      resumed: false, // subscribed before: the next subscription is a resume
    };
    store.set(id, room);
  }
  return room;
}

/** Keep a message; false if it was already known or has been deleted. */
function keep(room, msg) {
  if (!msg || typeof msg.id !== "string" || room.msgs.has(msg.id) || deletedIds.has(msg.id)) return false;
  room.msgs.set(msg.id, msg);
  if (room.msgs.size > MAX_KEPT) room.msgs.delete(oldest(room).id);
  return true;
}

function newest(room) {
  let best = null;
  for (const msg of room.msgs.values()) if (!best || after(msg, best)) best = msg;
  return best;
}

function oldest(room) {
  let best = null;
  for (const msg of room.msgs.values()) if (!best || after(best, msg)) best = msg;
  return best;
}

function inView(roomId) {
  return view.kind === "all" ? store.has(roomId) : view.id === roomId;
}

// --- live events --------------------------------------------------------------------

function onMessage(roomId, msg) {
  const room = store.get(roomId);
  if (!room || !keep(room, msg)) return;
  if (roomList.bump(roomId, msg.ts)) stats.bump();
  if (!inView(roomId)) return;
  pending.push([roomId, msg]);
  if (!batchTimer) batchTimer = setTimeout(flush, BATCH_MS);
  if (document.visibilityState === "hidden") {
    unread += 1;
    document.title = `(${unread}) ${baseTitle}`;
  }
}

function flush() {
  batchTimer = 0;
  const batch = pending.filter(([roomId, msg]) => inView(roomId) && !deletedIds.has(msg.id));
  pending = [];
  feed.addMany(batch, { live: true });
  updateHeader();
}

function onDeleted(roomId, id) {
  deletedIds.add(id);
  if (deletedIds.size > MAX_DELETED) deletedIds.delete(deletedIds.values().next().value);
  store.get(roomId)?.msgs.delete(id);
  feed.remove(id);
  updateHeader();
}

function onSubscribed(roomId, ok) {
  const room = store.get(roomId);
  if (!room) return;
  if (ok.room && typeof ok.room.name === "string") room.name = ok.room.name;
  if (ok.presence) {
    here.set(roomId, ok.presence);
    if (here.room === roomId) roomList.setPresent(roomId, here.agents);
  }
  if (room.resumed && ok.recovered === false && inView(roomId)) {
    notice(`Some messages in #${room.name} expired while the connection was down.`);
  }
  // Deletions made while disconnected are not replayed; check the open room's
  // recent history once it is live again.
  if (room.resumed && view.kind === "room" && view.id === roomId) reconcile(room);
  room.resumed = true;
  markLive();
}

function onPresence(roomId, frame) {
  here.apply(roomId, frame);
  if (here.room === roomId) roomList.setPresent(roomId, here.agents);
}

function onFailed(roomId, error) {
  const room = store.get(roomId);
  if (room && inView(roomId)) notice(`Cannot follow #${room.name}: ${error.error ?? "error"}`);
  if (view.kind === "all") store.delete(roomId);
  markLive();
}

async function reconcile(room) {
  let data;
  try {
    data = await api.roomHistory(room.id, { limit: HISTORY });
  } catch {
    return;
  }
  const listed = Array.isArray(data.messages) ? data.messages : [];
  if (store.get(room.id) !== room || !listed.length) return;
  const ids = new Set(listed.map((m) => m.id));
  const top = listed[0];
  const bottom = listed[listed.length - 1];
  for (const msg of [...room.msgs.values()]) {
    const inWindow = !after(msg, top) && (!data.has_more || !after(bottom, msg));
    if (inWindow && !ids.has(msg.id)) onDeleted(room.id, msg.id);
  }
}

const STATUS_TEXT = {
  connecting: () => (everOpened ? "Reconnecting…" : "Connecting…"),
  open: () => "Live",
  stopped: (detail) => `Disconnected: ${detail}`,
};
let countdown = 0;

function onStatus(state, detail) {
  const conn = $("conn");
  conn.dataset.state = state;
  clearInterval(countdown);
  const text = $("conn-text");
  if (state === "waiting") {
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((detail.retryAt - Date.now()) / 1000));
      text.textContent = `Offline (${detail.why}). Retrying in ${seconds} s`;
    };
    tick();
    countdown = setInterval(tick, 1000);
  } else {
    text.textContent = STATUS_TEXT[state]?.(detail) ?? state;
  }
  $("conn-retry").hidden = state !== "waiting" && state !== "stopped";
  if (state === "open") {
    if (everOpened) refreshRooms();
    everOpened = true;
  }
  markLive();
}

/** data-live on <main> says every room in the view is subscribed (tests wait on it). */
function markLive() {
  const ids = view.kind === "all" ? [...store.keys()] : [view.id];
  const ready = live.state === "open" && ids.length > 0 && ids.every((id) => live.isLive(id));
  $("main").dataset.live = ready ? "true" : "false";
}

// --- views --------------------------------------------------------------------------

function parseHash() {
  const match = /^#\/room\/(.+)$/.exec(window.location.hash);
  if (!match) return { kind: "all" };
  try {
    return { kind: "room", segment: decodeURIComponent(match[1]) };
  } catch {
    return { kind: "all" };
  }
}

async function showView(target) {
  const seq = ++viewSeq;
  let id = null;
  let preloaded = null;
  if (target.kind === "room") {
    const listed = roomList.resolve(target.segment);
    if (listed) {
      id = listed.id;
    } else {
      // A name (or an unlisted id): the server says which room it is, by the rule it
      // uses everywhere (the oldest public room of that name); its history comes along.
      try {
        preloaded = await api.roomHistory(target.segment, { limit: HISTORY });
      } catch (err) {
        if (seq === viewSeq) showMissing(target.segment, err);
        return;
      }
      if (seq !== viewSeq) return;
      id = preloaded.room.id;
      if (target.segment !== id) roomList.learn(target.segment, id);
      roomState(id, preloaded.room.name);
    }
  }
  view = { kind: target.kind, id };
  const wanted = target.kind === "all" ? roomList.channels.slice(0, MAX_ROOMS).map((c) => c.id) : [id];
  for (const roomId of [...store.keys()]) {
    if (!wanted.includes(roomId)) {
      live.unwatch(roomId);
      store.delete(roomId);
    }
  }
  roomList.select(target.kind === "all" ? "all" : id);
  if (target.kind === "all") here.hide();
  else here.show(id);
  feed.clear({ roomTags: target.kind === "all" });
  notice(null);
  const known = [];
  for (const room of store.values()) for (const msg of room.msgs.values()) known.push([room.id, msg]);
  feed.addMany(known);

  for (const roomId of wanted) roomState(roomId);
  // A single room always gets its history; the "all" view only for the busiest
  // few rooms it does not follow yet, the rest are followed from now on.
  let withHistory = wanted.filter((roomId) => !store.get(roomId).historyLoaded && !store.get(roomId).loading);
  if (target.kind === "all") withHistory = withHistory.filter((roomId) => !live.watching(roomId)).slice(0, ALL_HISTORY_ROOMS);
  for (const roomId of wanted) {
    if (!withHistory.includes(roomId) && !store.get(roomId).loading) live.watch(roomId, null, wantsPresence(roomId));
  }
  updateHeader();
  markLive();
  const limit = target.kind === "all" ? ALL_HISTORY : HISTORY;
  await Promise.all(withHistory.map((roomId) => loadHistory(store.get(roomId), limit, preloaded)));
  if (seq === viewSeq) {
    updateHeader();
    feed.toBottom();
  }
}

/** Load a room's recent messages, then follow it live from the newest one. */
async function loadHistory(room, limit, preloaded) {
  room.loading = true;
  let data = preloaded && preloaded.room.id === room.id ? preloaded : null;
  if (!data) {
    try {
      data = await api.roomHistory(room.id, { limit });
    } catch (err) {
      if (inView(room.id)) notice(`Could not load #${room.name}: ${err.message}`);
    }
  }
  room.loading = false;
  if (store.get(room.id) !== room) return; // left the view meanwhile
  if (data) {
    room.historyLoaded = true;
    room.hasMore = Boolean(data.has_more);
    const added = (data.messages ?? []).filter((msg) => keep(room, msg));
    if (inView(room.id)) feed.addMany(added.map((msg) => [room.id, msg]));
  }
  const top = newest(room);
  live.watch(room.id, top ? { ts: top.ts, id: top.id } : null, wantsPresence(room.id));
  markLive();
}

/** Who is here is followed for the open room only (the room list has counts for the rest). */
function wantsPresence(roomId) {
  return view.kind === "room" && view.id === roomId;
}

async function loadOlder() {
  const room = view.kind === "room" ? store.get(view.id) : null;
  const first = room && oldest(room);
  if (!first) return false;
  const button = $("load-older");
  button.disabled = true;
  try {
    const data = await api.roomHistory(room.id, { limit: HISTORY, before: first.id });
    if (store.get(room.id) !== room) return false;
    room.hasMore = Boolean(data.has_more);
    const added = (data.messages ?? []).filter((msg) => keep(room, msg));
    feed.addMany(added.map((msg) => [room.id, msg]));
    return added.length > 0;
  } catch (err) {
    notice(`Could not load older messages: ${err.message}`);
    return false;
  } finally {
    button.disabled = false;
    updateHeader();
  }
}

function showMissing(segment, err) {
  view = { kind: "room", id: null };
  for (const roomId of [...store.keys()]) live.unwatch(roomId);
  store.clear();
  roomList.select(null);
  here.hide();
  feed.clear({ roomTags: false });
  $("feed-title").textContent = `#${segment}`;
  $("feed-sub").textContent = "";
  $("load-older").hidden = true;
  notice(err.status === 404 ? "No public room has that name." : `Could not open the room: ${err.message}`);
  markLive();
}

function updateHeader() {
  const title = $("feed-title");
  const sub = $("feed-sub");
  const feedLabel = view.kind === "all" ? "Messages in all public rooms" : `Messages in #${store.get(view.id)?.name ?? ""}`;
  $("feed").setAttribute("aria-label", feedLabel);
  if (view.kind === "all") {
    title.textContent = "All public rooms";
    sub.textContent = `Live from ${count(store.size)} room${store.size === 1 ? "" : "s"}`;
    $("load-older").hidden = true;
    return;
  }
  const room = store.get(view.id);
  if (!room) return;
  title.textContent = `#${room.name}`;
  const listed = roomList.get(room.id);
  sub.textContent = listed
    ? `${count(listed.count)} messages · active ${ago(listed.last) || "never"}`
    : `${count(room.msgs.size)} recent messages`;
  $("load-older").hidden = !room.hasMore;
}

function notice(text) {
  const box = $("feed-notice");
  box.hidden = !text;
  box.textContent = text ?? "";
}

/** Read the room list and the figures. */
async function loadRooms() {
  try {
    const data = await api.channels(MAX_ROOMS);
    roomList.set(Array.isArray(data.channels) ? data.channels : []);
    $("rooms-note").hidden = true;
  } catch (err) {
    const note = $("rooms-note");
    note.hidden = false;
    note.textContent = `Could not load the room list: ${err.message}`;
  }
  stats.load();
}

/** Re-read the room list after a reconnect or on request. */
async function refreshRooms() {
  await loadRooms();
  if (view.kind === "all") {
    // Rooms created since the list was read join the "all" view from now on.
    for (const room of roomList.channels.slice(0, MAX_ROOMS)) {
      if (!store.has(room.id) && store.size < MAX_ROOMS) {
        roomState(room.id, room.name);
        live.watch(room.id, null);
      }
    }
  }
  updateHeader();
  markLive();
}

/** Follow a search result: open its room and scroll to the message. */
async function openResult(result) {
  search.close();
  const href = roomList.href({ id: result.room_id, name: result.room_name });
  if (window.location.hash !== href) {
    window.history.pushState(null, "", href); // no hashchange: this call shows the view
    shownHash = href;
    await showView(parseHash());
  }
  for (let page = 0; page < 5 && !feed.reveal(result.id); page += 1) {
    if (!(await loadOlder())) break;
  }
  if (!feed.has(result.id)) notice("That message is no longer in the room's history.");
}

// --- start --------------------------------------------------------------------------

const search = new Search(() => (view.kind === "room" ? view.id : null), openResult);
// Back/forward after pushState fires popstate, a typed or clicked hash fires
// hashchange, sometimes both: show each address once.
let shownHash = null;
const followHash = () => {
  if (window.location.hash === shownHash) return;
  shownHash = window.location.hash;
  showView(parseHash());
};
window.addEventListener("hashchange", followHash);
window.addEventListener("popstate", followHash);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    unread = 0;
    document.title = baseTitle;
  }
});
$("conn-retry").addEventListener("click", () => live.reconnectNow());
$("load-older").addEventListener("click", () => loadOlder());
$("refresh-rooms").addEventListener("click", () => refreshRooms());
// Relative times ("3 min ago") age without any network traffic.
setInterval(() => {
  roomList.render();
  updateHeader();
}, 60000);

fillExamples();
live.start();
await loadRooms();
shownHash = window.location.hash;
await showView(parseHash());
