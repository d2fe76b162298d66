"""One WebSocket session: handshake, the op loop, subscriptions and their live queue.

Outgoing frames are written straight to the socket's buffer (see wsserver); that
buffer is the session's bounded queue. A session whose buffer passes
``WS_QUEUE_BYTES`` is closed with 1013 and resumes elsewhere with ``since``: one
slow reader never slows the hub or its neighbours.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from aicq import auth, metrics, protocol, rediskit, validation
from aicq.errors import AICQError, BadRequest, Unauthorized, Unavailable
from aicq.fanout import Event, Hub
from aicq.routes import client_ip
from aicq.service import Caller, ChatService
from aicq.wsserver import Socket, text_frame

log = logging.getLogger("aicq.session")

MAX_SUBSCRIPTIONS = 100
# Live events that may wait while a subscription replays history.
MAX_HELD_EVENTS = 10_000
REPLAY_DRAIN_TIMEOUT_S = 30.0

CLOSE_POLICY = 1008
CLOSE_TOO_SLOW = 1013  # "try again later": too slow, or a store is away
# 1012 (restart) is uvicorn's: on SIGTERM it closes every open session with it.


class Registry:
    """The sessions open on this instance (for the gauge)."""

    def __init__(self) -> None:
        self.sessions: set[Session] = set()

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        metrics.WS_SESSIONS.set(len(self.sessions))

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        metrics.WS_SESSIONS.set(len(self.sessions))


@dataclass(eq=False, slots=True)
class Subscription:
    """A session's interest in one room. While ``held`` is a list, replay is running.

    ``newest`` is the (ts, id) of the last message this subscriber got. Live events
    arrive in (ts, id) order, so anything not newer is something it already has: a
    back-fill after a Redis outage overlapping its own replay, say. It is dropped.
    """

    session: Session
    room_id: str
    held: list[Event] | None = field(default_factory=list)
    newest: tuple[int, str] | None = None

    def deliver(self, events: list[Event], frames: bytes) -> None:
        if self.held is not None:
            if len(self.held) + len(events) <= MAX_HELD_EVENTS:
                self.held.extend(events)
            else:
                self.session.too_slow()
            return
        first = events[0].key
        if self.newest is not None and (first is None or first <= self.newest):
            events = [e for e in events if e.key is None or e.key > self.newest]
            if not events:
                return
            frames = b"".join(e.frame for e in events)
        for event in reversed(events):
            if event.key is not None:
                self.newest = event.key
                break
        self.session.push(frames)


class Session:
    # One per open connection, 10,000s per instance: no per-object __dict__.
    __slots__ = ("caller", "closing", "hub", "id", "queue_limit", "service", "socket", "subscriptions",
                 "websocket")

    def __init__(self, websocket: WebSocket, socket: Socket, service: ChatService, hub: Hub, caller: Caller):
        self.websocket = websocket
        self.socket = socket
        self.service = service
        self.hub = hub
        self.caller = caller
        self.id = uuid.uuid4().hex
        self.queue_limit = service.settings.ws_queue_bytes
        self.subscriptions: dict[str, Subscription] = {}
        self.closing = False

    # Outgoing

    def push(self, frames: bytes) -> None:
        """Hand serialised frames to the socket, or close the session if it fell behind."""
        if not self.closing and not self.socket.offer(frames, self.queue_limit):
            self.too_slow()

    def send(self, payload: bytes) -> None:
        self.push(text_frame(payload))

    def too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        metrics.WS_SLOW_DISCONNECTS.inc()
        log.info("closing a slow reader", extra={"session": self.id, "code": CLOSE_TOO_SLOW})
        self.socket.close(CLOSE_TOO_SLOW, "too slow: reconnect and resume with since")

    def deliver(self, events: list[Event], frames: bytes) -> None:  # DMs: always live
        self.push(frames)

    # Lifecycle

    async def run(self) -> None:
        try:
            with rediskit.budget():
                await self.service.ensure_not_blocked(self.caller)
                creds = auth.from_headers(self.websocket.headers)
                if creds is not None:
                    await self.service.authenticate(self.caller, creds, b"")
        except Unavailable as exc:  # a store is away: come back and try again
            self.socket.close(CLOSE_TOO_SLOW, exc.message[:120])
            return
        except AICQError as exc:
            self.socket.close(CLOSE_POLICY, exc.message[:120])
            return
        agent = self.caller.agent
        log.debug("session opened", extra={"session": self.id, "agent": agent.id if agent else None,
                                           "ip": self.caller.ip})
        self.send(protocol.hello(self.id, agent.id if agent else None,
                                 self.service.settings.ws_heartbeat, self.service.settings.instance))
        try:
            if agent is not None:
                try:
                    await self.hub.join_dms(agent.id, self)
                except Unavailable as exc:  # Redis is away: come back and resume
                    self.socket.close(CLOSE_TOO_SLOW, exc.message[:120])
                    return
            while not self.closing:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self.send(protocol.error(None, 400, "binary frames are not supported; send JSON text"))
                    continue
                await self.handle(text)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the peer went away mid-send
        finally:
            await self.release()
            log.debug("session closed", extra={"session": self.id})

    async def release(self) -> None:
        for room_id, subscription in list(self.subscriptions.items()):
            await self.hub.leave_room(room_id, subscription)
        self.subscriptions.clear()
        if self.caller.agent is not None:
            await self.hub.leave_dms(self.caller.agent.id, self)

    # Ops

    async def handle(self, text: str) -> None:
        ref = None
        op: protocol.Op | None = None
        try:
            op = protocol.parse(text)
            ref = op.ref
            handler = getattr(self, f"op_{op.name}")
            with rediskit.budget():  # an op, like a request, never hangs on Redis
                answer = await handler(op.args, ref)
            if answer is not None:
                self.send(answer)
        except protocol.FrameError as exc:
            self.send(protocol.error(exc.ref, exc.status, exc.message))
        except Unauthorized as exc:
            self.send(protocol.error(ref, exc.status, exc.message))
            if op is not None and op.name == "auth":
                self.closing = True
                self.socket.close(CLOSE_POLICY, exc.message[:120])
        except AICQError as exc:
            self.send(protocol.error(ref, exc.status, exc.message))
        except Exception:
            log.exception("op failed", extra={"session": self.id})
            self.send(protocol.error(ref, 500, "internal error"))

    async def op_ping(self, args: dict[str, Any], ref: Any) -> bytes:
        return protocol.pong(ref, int(time.time() * 1000))

    async def op_auth(self, args: dict[str, Any], ref: Any) -> bytes:
        if self.caller.agent is not None:
            raise BadRequest("already authenticated")
        ts = args.get("ts")
        if isinstance(ts, int) and not isinstance(ts, bool):
            ts = str(ts)
        creds = auth.credentials(args.get("agent"), args.get("nonce"), ts, args.get("sig"))
        agent = await self.service.authenticate(self.caller, creds, b"")
        await self.hub.join_dms(agent.id, self)
        return protocol.ok(ref, agent=agent.id)

    async def op_subscribe(self, args: dict[str, Any], ref: Any) -> bytes | None:
        ref_room = _string(args, "room")
        key = _string(args, "key", required=False)
        cursor = validation.cursor(args.get("since"), "since")
        if cursor is not None:
            await self.service.charge_replay(self.caller)
        room = await self.service.room(ref_room, key)
        if room.id in self.subscriptions:
            await self.hub.leave_room(room.id, self.subscriptions.pop(room.id))
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise BadRequest(f"at most {MAX_SUBSCRIPTIONS} subscriptions per session")
        subscription = Subscription(self, room.id)
        self.subscriptions[room.id] = subscription
        try:
            # Listen first, then read history: whatever is published meanwhile waits in
            # `held` and goes out after the replay, minus what the replay already sent.
            await self.hub.join_room(room.id, subscription)
            replayed, newest, recovered = (
                await self._replay(room, cursor) if cursor is not None else (set(), None, True))
        except BaseException:
            self.subscriptions.pop(room.id, None)
            await self.hub.leave_room(room.id, subscription)
            raise
        self.send(protocol.ok(ref, room={"id": room.id, "name": room.name},
                              replayed=len(replayed), recovered=recovered))
        subscription.newest = newest
        held, subscription.held = subscription.held or [], None
        fresh = [event for event in held if event.id not in replayed]
        if fresh:
            subscription.deliver(fresh, b"".join(event.frame for event in fresh))
        return None

    async def _replay(self, room: Any, cursor: int | str) -> tuple[set[str], tuple[int, str] | None, bool]:
        """Send history after ``cursor``: (ids sent, (ts, id) of the newest, recovered)."""
        sent: set[str] = set()
        newest = None
        recovered = True
        async for page, page_recovered in self.service.replay(room, cursor):
            recovered = page_recovered
            for message in page:
                sent.add(message.id)
                newest = (message.ts, message.id)
                self.socket.send(protocol.message_event(message))
            if not await self.socket.drain(REPLAY_DRAIN_TIMEOUT_S):
                if self.socket.open:  # still connected, just not reading
                    self.too_slow()
                break
        return sent, newest, recovered

    async def op_unsubscribe(self, args: dict[str, Any], ref: Any) -> bytes:
        ref_room = _string(args, "room")
        room = await self.service.resolve_room(ref_room)
        subscription = self.subscriptions.pop(room.id, None)
        if subscription is not None:
            await self.hub.leave_room(room.id, subscription)
        return protocol.ok(ref, room=room.id)

    async def op_post(self, args: dict[str, Any], ref: Any) -> bytes:
        room = _string(args, "room")
        data = {"body": args.get("body"), "pid": args.get("pid")}
        result = await self.service.post_message(self.caller, room, data, _string(args, "key", required=False))
        return protocol.ok(ref, **result)

    async def op_dm(self, args: dict[str, Any], ref: Any) -> bytes:
        to = _string(args, "to")
        result = await self.service.send_dm(self.caller, to, {"body": args.get("body")})
        return protocol.ok(ref, **result)

    async def op_delete(self, args: dict[str, Any], ref: Any) -> bytes:
        room = _string(args, "room")
        message_id = _string(args, "id")
        await self.service.delete_message(self.caller, room, message_id)
        return protocol.ok(ref, room=room, id=message_id)


def _string(args: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


async def endpoint(websocket: WebSocket) -> None:
    app = websocket.app
    socket: Socket | None = websocket.scope.get("extensions", {}).get("aicq.socket")
    if socket is None:  # served by another WebSocket implementation: refuse, loudly
        log.error("/ws needs aicq.wsserver.AICQWebSocketProtocol (uvicorn --ws)")
        await websocket.close(1011)
        return
    await websocket.accept()
    service: ChatService = app.state.service
    session = Session(websocket, socket, service, app.state.hub, service.caller(client_ip(websocket)))
    app.state.sessions.add(session)
    try:
        await session.run()
    finally:
        app.state.sessions.discard(session)
