// The live connection: one WebSocket to /ws, its subscriptions, and resume.
//
// Every watched room has a cursor: the newest message seen, as (ts, id). After any
// disconnect the connection comes back with backoff and re-subscribes each room
// with `since` = its cursor, so the server replays exactly what was missed. A room
// that has shown no message yet gets a cursor from the server's clock (a `ping`
// answered just before its subscribe), never from the browser's clock.

const MAX_ROOMS = 100; // the server's per-session subscription limit
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STABLE_MS = 10000; // a connection that lived this long resets the backoff
const RESUMABLE = new Set([1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014]);
const FATAL = { 1008: "refused by server policy", 1009: "a frame was too large" };
const BUSY_RETRY_MS = 15000; // a refused subscribe that names no wait is tried again after this

/** Order two positions in a room by (ts, id), as the server orders messages. */
export function after(a, b) {
  if (a.ts !== b.ts) return a.ts > b.ts;
  return a.id > b.id;
}

export class Live {
  /**
   * @param {string} url  ws(s) URL of /ws
   * @param {object} on   callbacks: status(state, detail), message(room, msg),
   *   deleted(room, id), subscribed(room, okFrame), failed(room, errorFrame),
   *   presence(room, joinLeaveOrStatusFrame)
   */
  constructor(url, on) {
    this.url = url;
    this.on = on;
    this.rooms = new Map(); // id -> {pos: {ts, id} | null, since: string | null, live: bool, presence: bool}
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.openedAt = 0;
    this.lastFrameAt = 0;
    this.heartbeatMs = 20000;
    this.refSeq = 0;
    this.pending = new Map(); // ref -> handler(frame)
    this.retryTimer = null;
    this.watchdog = null;
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.state === "waiting") this.reconnectNow();
    });
  }

  start() {
    if (!this.ws) this.connect();
  }

  /**
   * Follow a room. `pos` = newest message already shown ({ts, id}) or null.
   * `presence`: also who is here (the subscription's ok carries the roster, then
   * join, leave and status events follow). Asking for it on a room already
   * followed subscribes again (from its cursor), so a fresh roster comes.
   */
  watch(room, pos = null, presence = false) {
    const known = this.rooms.get(room);
    if (known) {
      if (presence) {
        known.presence = true;
        if (this.state === "open" && known.live) this.subscribeOne(room);
      }
      return true;
    }
    if (this.rooms.size >= MAX_ROOMS) return false;
    this.rooms.set(room, { pos, since: pos ? pos.id : null, live: false, presence });
    if (this.state === "open") this.subscribe([room]);
    return true;
  }

  unwatch(room) {
    if (!this.rooms.delete(room)) return;
    if (this.state === "open") this.send({ op: "unsubscribe", room });
  }

  watching(room) {
    return this.rooms.has(room);
  }

  /** Subscribed on the current connection. */
  isLive(room) {
    return this.state === "open" && Boolean(this.rooms.get(room)?.live);
  }

  reconnectNow() {
    if (this.state === "open" || this.state === "connecting") return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.connect();
  }

  // --- connection -------------------------------------------------------------

  connect() {
    this.setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this.scheduleRetry(`cannot connect: ${err.message}`);
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.handle(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.dropped(event.code, event.reason);
    };
  }

  dropped(code, reason) {
    this.ws = null;
    clearInterval(this.watchdog);
    this.pending.clear();
    for (const room of this.rooms.values()) room.live = false;
    if (this.openedAt && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    this.openedAt = 0;
    if (FATAL[code]) {
      this.setState("stopped", `${FATAL[code]}${reason ? `: ${reason}` : ""}`);
      return;
    }
    const why = code === 1012 ? "server restarting" : code === 1013 ? "connection too slow" : "connection lost";
    this.scheduleRetry(RESUMABLE.has(code) ? why : `closed (${code})`);
  }

  scheduleRetry(why) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.attempt += 1;
    this.setState("waiting", { why, retryAt: Date.now() + delay });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Close a connection that went silent; the close handler takes over. */
  kill(why) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(4000, why);
    } catch {
      // already closing
    }
    this.dropped(1006, why);
  }

  setState(state, detail = null) {
    this.state = state;
    this.on.status(state, detail);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  request(frame, handler) {
    const ref = `r${++this.refSeq}`;
    this.pending.set(ref, handler);
    this.send({ ...frame, ref });
  }

  // --- frames -----------------------------------------------------------------

  handle(frame) {
    switch (frame.type) {
      case "hello":
        this.opened(frame);
        break;
      case "message": {
        const room = this.rooms.get(frame.room);
        const msg = frame.msg;
        if (!room || !msg || typeof msg.id !== "string") return;
        if (!room.pos || after(msg, room.pos)) {
          room.pos = { ts: msg.ts, id: msg.id };
          room.since = msg.id;
        }
        this.on.message(frame.room, msg);
        break;
      }
      case "deleted":
        if (this.rooms.has(frame.room)) this.on.deleted(frame.room, frame.id);
        break;
      case "join":
      case "leave":
      case "status":
      case "presence":
        if (this.rooms.get(frame.room)?.presence && (frame.type === "presence" || typeof frame.agent?.id === "string")) {
          this.on.presence?.(frame.room, frame);
        }
        break;
      case "ok":
      case "error":
      case "pong": {
        const handler = this.pending.get(frame.ref);
        if (handler) {
          this.pending.delete(frame.ref);
          handler(frame);
        }
        break;
      }
      default:
        break;
    }
  }

  opened(hello) {
    this.openedAt = Date.now();
    const seconds = Number(hello.heartbeat);
    this.heartbeatMs = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 20000;
    this.setState("open");
    clearInterval(this.watchdog);
    // The browser answers protocol pings but cannot see them, so an app-level
    // ping tells a live connection from a half-open one (a phone waking up).
    this.watchdog = setInterval(() => {
      if (Date.now() - this.lastFrameAt > this.heartbeatMs * 2.5) this.kill("no answer from server");
      else this.send({ op: "ping" });
    }, this.heartbeatMs);
    this.subscribe([...this.rooms.keys()]);
  }

  subscribe(ids) {
    if (!ids.length) return;
    const needClock = ids.some((id) => this.rooms.get(id)?.since === null);
    if (!needClock) {
      for (const id of ids) this.subscribeOne(id);
      return;
    }
    this.request({ op: "ping" }, (pong) => {
      // Start rooms with no cursor at the server's "now" (ms, exclusive); minus one
      // so a message stamped in this very millisecond is not skipped.
      const now = Number(pong.server_time);
      for (const id of ids) {
        const room = this.rooms.get(id);
        if (!room) continue;
        if (room.since === null && Number.isFinite(now)) {
          room.since = String(now - 1);
          room.pos = { ts: now - 1, id: "" };
        }
        this.subscribeOne(id);
      }
    });
  }

  subscribeOne(id) {
    const room = this.rooms.get(id);
    if (!room) return;
    const frame = { op: "subscribe", room: id };
    if (room.since !== null) frame.since = room.since;
    if (room.presence) frame.presence = true;
    const ws = this.ws;
    this.request(frame, (answer) => {
      if (this.rooms.get(id) !== room) return; // unwatched meanwhile
      if (answer.type === "ok") {
        room.live = true;
        // Presence was asked for while this subscribe was on its way: ask again.
        if (room.presence && !frame.presence) {
          this.subscribeOne(id);
          return;
        }
        this.on.subscribed(id, answer);
      } else if (answer.code === 429 || answer.code === 503) {
        // A replay spends the read budget: wait as long as the server says (retrying
        // sooner only earns more refusals), rather than give up.
        const told = Number(answer.retry_after) * 1000;
        const delay = (Number.isFinite(told) && told > 0 ? told : BUSY_RETRY_MS) * (1 + Math.random() / 4);
        setTimeout(() => {
          if (this.ws === ws && this.rooms.get(id) === room) this.subscribeOne(id);
        }, delay);
      } else {
        this.rooms.delete(id);
        this.on.failed(id, answer);
      }
    });
  }
}
