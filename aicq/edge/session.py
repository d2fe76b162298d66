"""One WebSocket session: its ops, subscriptions and their live queue; the registry.

The session adopts its connection (see wsserver): the Socket hands it each client
message, and a worker task runs while there is something to do (opening the
session, ops in the order they came, releasing it once closed) and ends when the
session is idle, so an idle session holds no task and no coroutine frames. One
sweeper in the `Registry` beats every session's socket (keepalive, SPEC §6).

Outgoing frames are written straight to the socket's buffer; that buffer is the
session's bounded queue, for replayed history and live events alike. A session
whose buffer passes ``WS_QUEUE_BYTES`` is closed with 1013 and resumes elsewhere
with ``since``: one slow reader never slows the hub or its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from aicq import auth, metrics, protocol, rediskit
from aicq.edge.connections import SessionSlots, TooManySessions
from aicq.edge.request import client_ip, error_response
from aicq.edge.wsserver import Socket
from aicq.errors import AICQError, BadRequest, Unauthorized, Unavailable
from aicq.fanout import Event, Hub
from aicq.models import Room
from aicq.protocol import CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_TRY_AGAIN, text_frame
from aicq.service import Caller, ChatService, ReplayAllowance
from aicq.shutdown import cancel_and_wait

log = logging.getLogger("aicq.session")

MAX_SUBSCRIPTIONS = 100
# Live events that may wait while a subscription replays history.
MAX_HELD_EVENTS = 10_000
# A replay waits this long at most for the reader to take what is queued; a reader
# that takes longer is a slow reader like any other.
REPLAY_STALL_S = 10.0
# Client messages a session queues before its socket stops reading for a while.
MAX_PENDING_MESSAGES = 8
# The heartbeat pings this many sockets, then lets the loop run other work.
BEATS_PER_SLICE = 500


class Registry:
    """The sessions of this instance: the gauge, the one heartbeat for all of them,
    and, at shutdown, the wait for every session to be released."""

    def __init__(self, heartbeat: float) -> None:
        self.sessions: set[Session] = set()
        self.heartbeat = heartbeat
        self._sweeper: asyncio.Task[None] | None = None
        self._emptied: asyncio.Future[None] | None = None

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        metrics.WS_SESSIONS.set(len(self.sessions))

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        metrics.WS_SESSIONS.set(len(self.sessions))
        if not self.sessions and self._emptied is not None and not self._emptied.done():
            self._emptied.set_result(None)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="aicq-heartbeat")

    async def stop(self, timeout: float) -> None:
        """Stop the heartbeat; wait (bounded) until every closed session is released."""
        await cancel_and_wait(self._sweeper)
        if self.sessions:
            self._emptied = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._emptied, timeout)
            except TimeoutError:
                log.warning("%d sessions not released at shutdown", len(self.sessions))

    async def _sweep_forever(self) -> None:
        """Every interval, beat each session's socket: ping it, or close it if it said
        nothing since the previous ping. In slices, so one sweep never stalls the loop;
        a full interval always passes between two beats of a socket."""
        while True:
            await asyncio.sleep(self.heartbeat)
            for index, session in enumerate(list(self.sessions)):
                session.socket.beat()
                if index % BEATS_PER_SLICE == BEATS_PER_SLICE - 1:
                    await asyncio.sleep(0)


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
    wants_presence: bool = False  # presence events too (join, leave, status; the hub filters them)
    socket: Socket = field(init=False)  # the session's: one object less per delivery

    def __post_init__(self) -> None:
        self.socket = self.session.socket

    def deliver(self, events: list[Event], frames: bytes) -> None:
        # The hottest path in the server: once per subscriber per publication.
        if self.held is not None:
            if len(self.held) + len(events) <= MAX_HELD_EVENTS:
                self.held.extend(events)
            else:
                self.session.too_slow()
            return
        newest = self.newest
        if newest is not None:
            first = events[0].key
            if first is None or first <= newest:
                events = [e for e in events if e.key is None or e.key > newest]
                if not events:
                    return
                frames = b"".join(e.frame for e in events)
        last = events[-1].key
        if last is None:  # a deletion last: the newest key is further back, if any
            last = next((e.key for e in reversed(events) if e.key is not None), None)
        if last is not None:
            self.newest = last
        if not self.socket.offer(frames):  # Session.push, minus a step
            self.session.too_slow()

    def go_live(self, newest: tuple[int, str] | None) -> None:
        """Replay is done: release the held events it did not already cover."""
        self.newest = newest
        held, self.held = self.held or [], None
        if held:
            self.deliver(held, b"".join(event.frame for event in held))


class Session:
    """One adopted WebSocket connection (a `wsserver.Handler`)."""

    # One per open connection, 10,000s per instance: no per-object __dict__.
    __slots__ = ("caller", "closing", "hub", "id", "inbox", "registry", "replay_allowance", "service", "slots",
                 "socket", "subscriptions", "visitor", "worker")

    def __init__(self, socket: Socket, service: ChatService, hub: Hub, caller: Caller, registry: Registry,
                 slots: SessionSlots | None = None):
        self.socket = socket
        self.slots = slots  # holding one of the client's slots, given back on release
        self.service = service
        self.hub = hub
        self.caller = caller
        self.registry = registry
        self.id = uuid.uuid4().hex
        # The socket's write buffer is the session's queue. Replay waits for it to fall
        # below its high-water mark: keep that mark well under the bound, so a paced
        # frame always fits.
        queue_bytes = service.settings.ws_queue_bytes
        socket.bound(queue_bytes, high=queue_bytes // 4)
        self.subscriptions: dict[str, Subscription] = {}
        self.replay_allowance = ReplayAllowance()
        self.visitor = service.presence.visitor()  # where this session is live, as whom
        self.closing = False
        self.inbox: list[str | None] | None = None  # client messages waiting for the worker
        self.worker: asyncio.Task[None] | None = None

    # Outgoing: one bounded path for everything the session sends

    def push(self, frames: bytes) -> None:
        """Hand serialised frames to the socket, or close the session if it fell behind."""
        if not self.socket.offer(frames):
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

    # Lifecycle: the Socket calls on_message and on_close; the worker does the rest

    def start(self, headers: Mapping[str, str]) -> None:
        """The connection is accepted: open the session (auth by ``headers``, hello, DMs)."""
        assert self.worker is None, "nothing runs before the session opens"
        self.worker = asyncio.create_task(self._work(headers))

    def on_message(self, text: str | None) -> None:
        if self.closing:
            return
        if self.inbox is None:
            self.inbox = []
        self.inbox.append(text)
        if len(self.inbox) >= MAX_PENDING_MESSAGES:
            self.socket.pause_reading()
        if self.worker is None:
            self.worker = asyncio.create_task(self._work(None))

    def on_close(self) -> None:
        self.closing = True
        if self.worker is None:  # otherwise the running worker releases once it is done
            self.worker = asyncio.create_task(self._work(None))

    async def _work(self, opening: Mapping[str, str] | None) -> None:
        """The session's only task, while there is work: open, then the queued client
        messages in order; once closed, release. Never two at a time."""
        try:
            if opening is not None:
                await self._open(opening)
            while self.inbox and not self.closing:
                text = self.inbox.pop(0)
                if text is None:
                    self.send(protocol.error(None, 400, "binary frames are not supported; send JSON text"))
                else:
                    await self.handle(text)
            self.inbox = None
            self.socket.resume_reading()
        except Exception:
            log.exception("session failed", extra={"session": self.id})
            self.close(protocol.CLOSE_INTERNAL, "internal error")
        finally:
            if self.closing:
                await self.release()
            self.worker = None

    async def _open(self, headers: Mapping[str, str]) -> None:
        try:
            with rediskit.budget():
                await self.service.ensure_not_blocked(self.caller)
                creds = auth.from_headers(headers)
                if creds is not None:
                    self.caller = self.caller.signed_in(await self.service.authenticate(creds, b""))
        except Unavailable as exc:  # a store is away: come back and try again
            self.close(CLOSE_TRY_AGAIN, exc.message)
            return
        except AICQError as exc:
            self.close(CLOSE_POLICY, exc.message)
            return
        agent = self.caller.agent
        if agent is not None:
            self.visitor.identify(agent)
        log.debug("session opened", extra={"session": self.id, "agent": agent.id if agent else None,
                                           "ip": self.caller.ip})
        self.send(protocol.hello(self.id, agent.id if agent else None,
                                 self.service.settings.ws_heartbeat, self.service.settings.instance))
        if agent is not None:
            try:
                await self.hub.join_dms(agent.id, self)
            except Unavailable as exc:  # Redis is away: come back and resume
                self.close(CLOSE_TRY_AGAIN, exc.message)

    async def release(self) -> None:
        """Leave every channel; the session is gone. Once, by the worker, after closing."""
        try:
            self.visitor.close()
            for room_id, subscription in list(self.subscriptions.items()):
                await self.hub.leave_room(room_id, subscription)
            self.subscriptions.clear()
            if self.caller.agent is not None:
                await self.hub.leave_dms(self.caller.agent.id, self)
        finally:
            self.registry.discard(self)
            if self.slots is not None:
                self.slots.release(self.caller.ip)
            log.debug("session closed", extra={"session": self.id})

    # Ops

    async def handle(self, text: str) -> None:
        ref: Any = None
        op: protocol.Op | None = None
        try:
            request = protocol.parse(text)
            ref, op = request.ref, request.op
            with rediskit.budget():  # an op, like a request, never hangs on Redis
                answer = await OPS[type(op)](self, op, ref)
            if answer is not None:
                self.send(answer)
        except protocol.FrameError as exc:
            self.send(protocol.error(exc.ref, exc.status, exc.message))
            if exc.status == Unauthorized.status:  # a malformed auth frame
                self.close(CLOSE_POLICY, exc.message)
        except AICQError as exc:
            self.send(protocol.error(ref, exc.status, exc.message, _retry_after(exc)))
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
        self.visitor.identify(agent)
        return protocol.ok(ref, agent=agent.id)

    async def subscribe(self, op: protocol.Subscribe, ref: Any) -> None:
        # Free when the room exists and nothing is replayed; a replay pays per message
        # sent (see ChatService.replay), a miss pays a read, and so does who is here.
        if op.presence:
            await self.service.admit(self.caller, "read_room")
        room = await self.service.streamed_room(self.caller, op.room, op.key)
        if room.id in self.subscriptions:
            await self.hub.leave_room(room.id, self.subscriptions.pop(room.id))
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise BadRequest(f"at most {MAX_SUBSCRIPTIONS} subscriptions per session")
        subscription = Subscription(self, room.id, wants_presence=op.presence)
        self.subscriptions[room.id] = subscription
        try:
            # Listen first, then read history: whatever is published meanwhile waits in
            # `held` and goes out after the replay, minus what the replay already sent.
            await self.hub.join_room(room.id, subscription)
            self.visitor.enter(room.id)
            if op.since is None:
                replayed, newest = 0, None
                cursor = await self.service.position(room)
            else:
                replayed, newest = await self._replay(room, op.since)
                cursor = newest[1] if newest else op.since
            # Who is here, read after listening too: the events held since complete it.
            here = {"presence": await self.service.roster(room, settle=True)} if op.presence else {}
        except BaseException:
            self.subscriptions.pop(room.id, None)
            self.visitor.exit(room.id)
            await self.hub.leave_room(room.id, subscription)
            raise
        recovered = op.since is None or self.service.recovered(op.since)
        # `cursor`: what to resume with when nothing newer arrives, so a client that
        # saw no message in a quiet room still misses nothing across a reconnect.
        self.send(protocol.ok(ref, room={"id": room.id, "name": room.name},
                              replayed=replayed, recovered=recovered, cursor=cursor, **here))
        subscription.go_live(newest)

    async def _replay(self, room: Room, cursor: int | str) -> tuple[int, tuple[int, str] | None]:
        """Send history after ``cursor`` through the bounded queue: (count, newest (ts, id))."""
        count, newest = 0, None
        async for page in self.service.replay(room, cursor, caller=self.caller, allowance=self.replay_allowance):
            for message in page:
                if not await self.push_paced(text_frame(protocol.message_event(message))):
                    return count, newest
                count += 1
                newest = (message.ts, message.id)
        return count, newest

    async def unsubscribe(self, op: protocol.Unsubscribe, ref: Any) -> bytes:
        room_id = op.room
        if room_id not in self.subscriptions:
            room_id = (await self.service.streamed_room(self.caller, op.room, keyed=False)).id
        subscription = self.subscriptions.pop(room_id, None)
        self.visitor.exit(room_id)
        if subscription is not None:
            await self.hub.leave_room(room_id, subscription)
        return protocol.ok(ref, room=room_id)

    async def post(self, op: protocol.Post, ref: Any) -> bytes:
        posted = await self.service.post_message(self.caller, op.room, op.body, op.pid, op.key,
                                                 admission=self.service.admission(self.caller, "post_message"))
        return protocol.ok(ref, id=posted.id, ts=posted.ts)

    async def send_dm(self, op: protocol.SendDM, ref: Any) -> bytes:
        posted = await self.service.send_dm(self.caller, op.to, op.body,
                                            admission=self.service.admission(self.caller, "send_dm"))
        return protocol.ok(ref, id=posted.id, ts=posted.ts)

    async def delete(self, op: protocol.Delete, ref: Any) -> bytes:
        await self.service.admit(self.caller, "delete_message")
        await self.service.delete_message(self.caller, op.room, op.id)
        return protocol.ok(ref, room=op.room, id=op.id)

    async def set_status(self, op: protocol.SetStatus, ref: Any) -> bytes:
        await self.service.admit(self.caller, "set_status")
        return protocol.ok(ref, **await self.service.set_status(self.caller, op.status, op.text, op.ttl))


def _retry_after(exc: AICQError) -> int | None:
    value = exc.headers.get("Retry-After")
    return int(value) if value is not None and value.isdigit() else None


OpHandler = Callable[[Session, Any, Any], Awaitable[bytes | None]]
OPS: dict[type, OpHandler] = {
    protocol.Ping: Session.ping,
    protocol.Auth: Session.authenticate,
    protocol.Subscribe: Session.subscribe,
    protocol.Unsubscribe: Session.unsubscribe,
    protocol.Post: Session.post,
    protocol.SendDM: Session.send_dm,
    protocol.Delete: Session.delete,
    protocol.SetStatus: Session.set_status,
}


async def endpoint(websocket: WebSocket) -> None:
    """Accept ``/ws`` and hand the connection to a new Session; returns at once."""
    app = websocket.app
    socket: Socket | None = websocket.scope.get("extensions", {}).get("aicq.socket")
    if socket is None:  # served by another WebSocket implementation: refuse, loudly
        log.error("/ws needs aicq.edge.wsserver.AICQWebSocketProtocol (uvicorn --ws)")
        await websocket.close(CLOSE_INTERNAL.code)
        return
    service: ChatService = app.state.service
    caller = service.caller(client_ip(websocket))
    slots: SessionSlots = app.state.session_slots
    # Over the cap, the upgrade is refused before anything is allocated for it: a 429
    # with Retry-After, which clients treat as "come back later" (1008 would be final).
    if not caller.whitelisted and not slots.acquire(caller.ip):
        metrics.BLOCKED_REQUESTS.labels(reason="session_cap").inc()
        log.warning("session cap reached", extra={"event": "session_cap", "ip": caller.ip})
        await websocket.send_denial_response(error_response(TooManySessions(slots.limit)))
        return
    registry: Registry = app.state.sessions
    held = None if caller.whitelisted else slots  # the session gives its slot back on release
    session = Session(socket, service, app.state.hub, caller, registry, held)
    socket.serve(session)
    await websocket.accept()  # the Socket takes the connection over as the 101 goes out
    if socket.adopted:
        registry.add(session)
        session.start(websocket.headers)
    elif held is not None:  # the peer left during the handshake
        held.release(caller.ip)
