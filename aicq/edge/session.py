"""One WebSocket session: handshake, the op loop, subscriptions and their live queue.

Outgoing frames are written straight to the socket's buffer (see wsserver); that
buffer is the session's bounded queue, for replayed history and live events alike.
A session whose buffer passes ``WS_QUEUE_BYTES`` is closed with 1013 and resumes
elsewhere with ``since``: one slow reader never slows the hub or its neighbours.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from aicq import auth, metrics, protocol
from aicq.edge.request import client_ip
from aicq.edge.wsserver import Socket
from aicq.errors import AICQError, BadRequest, Unauthorized, Unavailable
from aicq.fanout import Event, Hub
from aicq.models import Room
from aicq.protocol import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_AGAIN, text_frame
from aicq.service import Caller, ChatService

log = logging.getLogger("aicq.session")

MAX_SUBSCRIPTIONS = 100
# Live events that may wait while a subscription replays history.
MAX_HELD_EVENTS = 10_000
# A replay waits this long at most for the reader to take what is queued; a reader
# that takes longer is a slow reader like any other.
REPLAY_STALL_S = 10.0


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
    arrive in (ts, id) order, so a message not newer is one it already has (from
    its own replay, or a back-fill after a Redis outage overlapping it): dropped.
    Other events (a deletion) carry no such key and always pass.
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

    def go_live(self, newest: tuple[int, str] | None) -> None:
        """Replay is done: release the held events it did not already cover."""
        self.newest = newest
        held, self.held = self.held or [], None
        if held:
            self.deliver(held, b"".join(event.frame for event in held))


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
        # Replay waits for the buffer to fall below its high-water mark: keep that
        # mark well under the queue bound, so a paced frame always fits.
        socket.cap_high_water(self.queue_limit // 4)
        self.subscriptions: dict[str, Subscription] = {}
        self.closing = False

    # Outgoing: one bounded path for everything the session sends

    def push(self, frames: bytes) -> None:
        """Hand serialised frames to the socket, or close the session if it fell behind."""
        if not self.closing and not self.socket.offer(frames, self.queue_limit):
            self.too_slow()

    def send(self, payload: bytes) -> None:
        self.push(text_frame(payload))

    async def push_paced(self, frames: bytes) -> bool:
        """``push`` for history being replayed: it may be larger than the queue.

        Waits (bounded) until the socket's buffer is below its high-water mark, then
        pushes like any live frame, so the queue bound holds throughout. False when
        the session is closing or too slow.
        """
        if not await self.socket.drain(REPLAY_STALL_S):
            if self.socket.open:  # still connected, just not reading
                self.too_slow()
            return False
        self.push(frames)
        return not self.closing

    def too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        metrics.WS_SLOW_DISCONNECTS.inc()
        log.info("closing a slow reader", extra={"session": self.id, "code": CLOSE_TRY_AGAIN.code})
        self.close(CLOSE_TRY_AGAIN, "too slow: reconnect and resume with since")

    def close(self, code: protocol.CloseCode, reason: str) -> None:
        self.closing = True
        self.socket.close(code.code, reason[:120])

    def deliver(self, events: list[Event], frames: bytes) -> None:  # DMs: always live
        self.push(frames)

    # Lifecycle

    async def run(self) -> None:
        try:
            await self.service.ensure_not_blocked(self.caller)
            creds = auth.from_headers(self.websocket.headers)
            if creds is not None:
                self.caller = self.caller.signed_in(await self.service.authenticate(creds, b""))
        except AICQError as exc:
            self.close(CLOSE_POLICY, exc.message)
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
                    self.close(CLOSE_TRY_AGAIN, exc.message)
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
        ref: Any = None
        op: protocol.Op | None = None
        try:
            request = protocol.parse(text)
            ref, op = request.ref, request.op
            answer = await OPS[type(op)](self, op, ref)
            if answer is not None:
                self.send(answer)
        except protocol.FrameError as exc:
            self.send(protocol.error(exc.ref, exc.status, exc.message))
            if exc.status == Unauthorized.status:  # a malformed auth frame
                self.close(CLOSE_POLICY, exc.message)
        except AICQError as exc:
            self.send(protocol.error(ref, exc.status, exc.message))
            if isinstance(op, protocol.Auth) and isinstance(exc, Unauthorized):
                self.close(CLOSE_POLICY, exc.message)  # a session that cannot prove who it is ends
        except Exception:
            log.exception("op failed", extra={"session": self.id})
            self.send(protocol.error(ref, 500, "internal error"))

    async def ping(self, op: protocol.Ping, ref: Any) -> bytes:
        return protocol.pong(ref, int(time.time() * 1000))

    async def authenticate(self, op: protocol.Auth, ref: Any) -> bytes:
        if self.caller.agent is not None:
            raise BadRequest("already authenticated")
        agent = await self.service.authenticate(op.credentials, b"")
        self.caller = self.caller.signed_in(agent)
        await self.hub.join_dms(agent.id, self)
        return protocol.ok(ref, agent=agent.id)

    async def subscribe(self, op: protocol.Subscribe, ref: Any) -> None:
        if op.since is not None:
            # Replaying history reads what GET /room reads, and costs the same.
            await self.service.admit(self.caller, "read_room")
        agent = self.caller.agent
        room = await self.service.room(op.room, op.key, agent.id if agent else None)
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
            replayed, newest = await self._replay(room, op.since) if op.since is not None else (0, None)
        except BaseException:
            self.subscriptions.pop(room.id, None)
            await self.hub.leave_room(room.id, subscription)
            raise
        recovered = op.since is None or self.service.recovered(op.since)
        self.send(protocol.ok(ref, room={"id": room.id, "name": room.name},
                              replayed=replayed, recovered=recovered))
        subscription.go_live(newest)

    async def _replay(self, room: Room, cursor: int | str) -> tuple[int, tuple[int, str] | None]:
        """Send history after ``cursor`` through the bounded queue: (count, newest (ts, id))."""
        count, newest = 0, None
        async for page in self.service.replay(room, cursor):
            for message in page:
                if not await self.push_paced(text_frame(protocol.message_event(message))):
                    return count, newest
                count += 1
                newest = (message.ts, message.id)
        return count, newest

    async def unsubscribe(self, op: protocol.Unsubscribe, ref: Any) -> bytes:
        room = await self.service.resolve_room(op.room)
        subscription = self.subscriptions.pop(room.id, None)
        if subscription is not None:
            await self.hub.leave_room(room.id, subscription)
        return protocol.ok(ref, room=room.id)

    async def post(self, op: protocol.Post, ref: Any) -> bytes:
        await self.service.admit(self.caller, "post_message")
        posted = await self.service.post_message(self.caller, op.room, op.body, op.pid, op.key)
        return protocol.ok(ref, id=posted.id, ts=posted.ts)

    async def send_dm(self, op: protocol.SendDM, ref: Any) -> bytes:
        await self.service.admit(self.caller, "send_dm")
        posted = await self.service.send_dm(self.caller, op.to, op.body)
        return protocol.ok(ref, id=posted.id, ts=posted.ts)

    async def delete(self, op: protocol.Delete, ref: Any) -> bytes:
        await self.service.admit(self.caller, "delete_message")
        await self.service.delete_message(self.caller, op.room, op.id)
        return protocol.ok(ref, room=op.room, id=op.id)


OpHandler = Callable[[Session, Any, Any], Awaitable[bytes | None]]
OPS: dict[type, OpHandler] = {
    protocol.Ping: Session.ping,
    protocol.Auth: Session.authenticate,
    protocol.Subscribe: Session.subscribe,
    protocol.Unsubscribe: Session.unsubscribe,
    protocol.Post: Session.post,
    protocol.SendDM: Session.send_dm,
    protocol.Delete: Session.delete,
}


async def endpoint(websocket: WebSocket) -> None:
    app = websocket.app
    socket: Socket | None = websocket.scope.get("extensions", {}).get("aicq.socket")
    if socket is None:  # served by another WebSocket implementation: refuse, loudly
        log.error("/ws needs aicq.edge.wsserver.AICQWebSocketProtocol (uvicorn --ws)")
        await websocket.close(CLOSE_INTERNAL.code)
        return
    await websocket.accept()
    service: ChatService = app.state.service
    session = Session(websocket, socket, service, app.state.hub, service.caller(client_ip(websocket)))
    app.state.sessions.add(session)
    try:
        await session.run()
    finally:
        app.state.sessions.discard(session)
