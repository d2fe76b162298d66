"""The hub: one Redis pub/sub connection per instance, fanned out to local listeners.

Each instance subscribes once per channel that has local listeners (a room, or an
agent's DMs), not once per session. A publication arrives as ``<publish time>|<event
JSON>``; the hub parses it once, serialises the WebSocket frame once, and hands the
same bytes to every listener. If the pub/sub connection drops, the hub reconnects,
re-subscribes, and back-fills every room from history after the last event it saw,
so listeners miss nothing while Redis was away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aicq import metrics, protocol, rediskit
from aicq.errors import Unavailable
from aicq.history import History, dm_channel, room_channel
from aicq.models import DirectMessage, Message
from aicq.protocol import PRESENCE_EVENTS, text_frame
from aicq.shutdown import cancel_and_wait

log = logging.getLogger("aicq.fanout")

CONFIRM_TIMEOUT_S = 5.0
# A channel stays subscribed this long after its last listener left: long-poll
# clients leave and come back with every message, and should not cost a SUBSCRIBE
# and an UNSUBSCRIBE each time (nor lose what ``newest`` knows).
LINGER_S = 30.0
MAX_BATCH = 256
BACKFILL_PAGE = 500


@dataclass(frozen=True, slots=True)
class Event:
    """One event as every local listener receives it."""

    frame: bytes  # the serialised WebSocket frame, built once per instance
    payload: bytes  # the event's JSON (the frame's payload): SSE data, long-poll answers
    kind: str  # "message", "deleted", "dm", or a presence event ("join", "leave", "status", "presence"), or "mention"
    room: str | None
    id: str  # the message's (for "deleted": the deleted message's; presence: the agent's)
    ts: int | None
    # A message's or DM's place in its channel's (ts, id) order; None for other
    # events. Computed once here: every subscriber compares it. A mention rides its
    # agent's DM channel but is ordered by its room's clock: it takes no place there.
    key: tuple[int, str] | None = field(init=False, default=None)
    # The Server-Sent Events encoding, built by the first SSE stream that needs it
    # (edge/sse_wire.py) and shared by every other stream on this instance.
    sse: bytes | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind in ("message", "dm") and self.ts is not None:
            object.__setattr__(self, "key", (self.ts, self.id))

    @property
    def presence(self) -> bool:
        return self.kind in PRESENCE_EVENTS

    @classmethod
    def of(cls, payload: bytes, kind: str, room: str | None, id: str, ts: int | None) -> Event:
        return cls(text_frame(payload), payload, kind, room, id, ts)


class Listener(Protocol):
    def deliver(self, events: list[Event], frames: bytes) -> None:
        """Take ``events`` whose frames, concatenated, are ``frames``. Must not block.

        Presence events go only to listeners whose ``wants_presence`` is true.
        """


def parse_publication(data: bytes) -> tuple[float, Event] | None:
    published, _, payload = data.partition(b"|")
    try:
        body = orjson.loads(payload)
        kind = body["type"]
        if kind == "deleted":
            event = Event.of(payload, kind, body["room"], body["id"], None)
        elif kind in PRESENCE_EVENTS:
            event = Event.of(payload, kind, body["room"], body["agent"]["id"], None)
        else:
            msg = body["msg"]
            event = Event.of(payload, kind, body.get("room"), msg["id"], int(msg["ts"]))
        return float(published), event
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("ignored a malformed publication")
        return None


async def _close_quietly(pubsub: aioredis.client.PubSub | None) -> None:
    if pubsub is not None:
        try:
            await pubsub.aclose()
        except Exception:  # closing a connection that already failed may fail too
            pass


def message_event(message: Message) -> Event:
    return Event.of(protocol.message_event(message), "message", message.room_id, message.id, message.ts)


def presence_event(room_id: str, roster: bytes) -> Event:
    """``{"type": "presence", "room", "agents", "readers"}``: a room's whole roster."""
    payload = b'{"type":"presence","room":"%s",%s' % (room_id.encode(), roster[1:])
    return Event.of(payload, "presence", room_id, "", None)


def dm_event(dm: DirectMessage) -> Event:
    return Event.of(protocol.dm_event(dm), "dm", None, dm.id, dm.ts)


class Hub:
    def __init__(self, redis_url: str, history: History,
                 roster: Callable[[str], Awaitable[bytes]] | None = None):
        self._url = redis_url
        self._history = history
        self._roster = roster  # a room's presence as JSON, for listeners that follow it
        self._redis: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._listeners: dict[str, set[Listener]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        # The newest (ts, id) delivered per channel: where a back-fill resumes.
        self._last_seen: dict[str, tuple[int, str]] = {}
        self._joined_at: dict[str, int] = {}
        # While a back-fill runs, live events of the rooms being back-filled wait here,
        # so history goes out first and nothing is delivered twice.
        self._held: dict[str, list[tuple[float | None, Event]]] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._liveness = rediskit.Liveness()
        self._lingering: dict[str, asyncio.TimerHandle] = {}  # channels without listeners, for now
        self._expiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # No silent reconnects: the hub must see a lost pub/sub connection, to back-fill
        # what was published while it was away (redis-py would re-subscribe on its own).
        self._redis = rediskit.connect(self._url, retries=0)
        self._pubsub = self._redis.pubsub()
        await self._pubsub.connect()
        self._task = asyncio.create_task(self._read_forever(), name="aicq-hub")

    async def stop(self) -> None:
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        await cancel_and_wait(self._task, *self._expiring)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    # Listeners

    async def join_room(self, room_id: str, listener: Listener) -> None:
        await self._join(room_channel(room_id), listener)

    async def leave_room(self, room_id: str, listener: Listener) -> None:
        await self._leave(room_channel(room_id), listener)

    async def join_dms(self, agent_id: str, listener: Listener) -> None:
        await self._join(dm_channel(agent_id), listener)

    async def leave_dms(self, agent_id: str, listener: Listener) -> None:
        await self._leave(dm_channel(agent_id), listener)

    def newest(self, room_id: str) -> tuple[int, str] | None:
        """The newest message this hub has delivered on the room's channel since it
        subscribed to it (None: none yet, or no listener). To a listener that has
        joined, nothing newer exists in history that is not on its way to it: an
        earlier message of the room sorts before this one, and a later one is
        delivered to every listener present."""
        return self._last_seen.get(room_channel(room_id))

    async def _join(self, channel: str, listener: Listener) -> None:
        """Add a listener; returns once Redis confirmed the channel's subscription."""
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is not None:
                listeners.add(listener)
                lingering = self._lingering.pop(channel, None)
                if lingering is not None:
                    lingering.cancel()
                waiting = self._confirmations.get(channel)
            else:
                self._listeners[channel] = {listener}
                self._joined_at[channel] = int(time.time() * 1000)
                waiting = asyncio.get_running_loop().create_future()
                self._confirmations[channel] = waiting
                try:
                    assert self._pubsub is not None
                    await self._pubsub.subscribe(channel)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    self._forget(channel)
                    raise Unavailable("live delivery unavailable") from exc
        if waiting is not None:
            try:
                await rediskit.within_budget(asyncio.shield(waiting), CONFIRM_TIMEOUT_S)
            except TimeoutError:
                await self._leave(channel, listener)
                raise Unavailable("live delivery unavailable") from None

    async def _leave(self, channel: str, listener: Listener) -> None:
        async with self._lock:
            listeners = self._listeners.get(channel)
            if listeners is None:
                return
            listeners.discard(listener)
            if not listeners and channel not in self._lingering:
                self._lingering[channel] = asyncio.get_running_loop().call_later(
                    LINGER_S, self._start_expiry, channel)

    def _start_expiry(self, channel: str) -> None:
        task = asyncio.ensure_future(self._expire(channel))
        self._expiring.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._expiring.discard)

    async def _expire(self, channel: str) -> None:
        """Unsubscribe a channel whose linger ran out, unless someone joined meanwhile."""
        async with self._lock:
            if channel not in self._lingering or self._listeners.get(channel):
                return
            self._forget(channel)
            try:
                assert self._pubsub is not None
                await self._pubsub.unsubscribe(channel)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pass  # the reconnect re-subscribes only channels that still have listeners

    def _forget(self, channel: str) -> None:
        self._listeners.pop(channel, None)
        self._joined_at.pop(channel, None)
        self._last_seen.pop(channel, None)
        lingering = self._lingering.pop(channel, None)
        if lingering is not None:
            lingering.cancel()
        waiting = self._confirmations.pop(channel, None)
        if waiting is not None and not waiting.done():
            waiting.cancel()

    # Reading

    async def _read_forever(self) -> None:
        while True:
            try:
                assert self._pubsub is not None
                message = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
                if message is None and self._listeners:
                    await self._liveness.check(self._pubsub)  # a hung Redis is a lost one
                if message is not None:
                    self._liveness.heard()
                    batch = [message]
                    # Whatever else already arrived goes out with it: under load a
                    # session then gets several frames in one write (one TCP segment
                    # instead of several); when idle, nothing waits for company.
                    while len(batch) < MAX_BATCH:
                        more = await self._pubsub.get_message(ignore_subscribe_messages=False, timeout=0)
                        if more is None:
                            break
                        batch.append(more)
                    self._handle(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever broke, a fresh connection is the cure
                log.warning("pub/sub connection lost (%s: %s); reconnecting", type(exc).__name__, exc)
                await self._reconnect()

    def _handle(self, messages: list[dict]) -> None:
        """Confirm subscriptions, and dispatch publications grouped by channel, in order."""
        by_channel: dict[str, list[tuple[float | None, Event]]] = {}
        for message in messages:
            kind = message["type"]
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if kind == "message":
                parsed = parse_publication(message["data"])
                if parsed is None:
                    continue
                if self._held is not None and channel in self._held:
                    self._held[channel].append(parsed)
                else:
                    by_channel.setdefault(channel, []).append(parsed)
            elif kind == "subscribe":
                waiting = self._confirmations.pop(channel, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
        for channel, publications in by_channel.items():
            self.dispatch(channel, [event for _, event in publications], [p for p, _ in publications])

    def dispatch(self, channel: str, events: list[Event], published: list[float | None] | None = None) -> None:
        """Hand ``events`` (one channel's, in order) to every local listener of the channel."""
        for event in events:
            if event.key is not None:
                seen = self._last_seen.get(channel)
                if seen is None or event.key > seen:
                    self._last_seen[channel] = event.key
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        frames = events[0].frame if len(events) == 1 else b"".join(event.frame for event in events)
        if any(event.presence for event in events):
            self._dispatch_presence(listeners, events, frames)
        else:
            for listener in tuple(listeners):
                listener.deliver(events, frames)
            # Once per dispatch, never per delivery. A write per listener (fewer while one
            # replays): events per write is how much the hub coalesces under load.
            metrics.WS_EVENTS_DELIVERED.inc(len(listeners) * len(events))
            metrics.WS_WRITES.inc(len(listeners))
        now = time.time()
        for moment in published or ():
            if moment is not None:
                metrics.WS_DELIVERY_LATENCY.observe(max(0.0, now - moment))

    @staticmethod
    def _dispatch_presence(listeners: set[Listener], events: list[Event], frames: bytes) -> None:
        """A batch with presence events: those go only to the listeners that asked for
        them; the batch without them is built once for the others."""
        plain = [event for event in events if not event.presence]
        plain_frames = b"".join(event.frame for event in plain)
        delivered = 0
        for listener in tuple(listeners):
            if getattr(listener, "wants_presence", False):
                listener.deliver(events, frames)
                delivered += len(events)
            elif plain:
                listener.deliver(plain, plain_frames)
                delivered += len(plain)
        metrics.WS_EVENTS_DELIVERED.inc(delivered)

    async def _reconnect(self) -> None:
        """Until it works: a fresh pub/sub connection with every live channel; then a
        back-fill from history of whatever was published while the hub was away."""
        backoff = 0.1
        while (cursors := await self._resubscribe()) is None:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        try:
            await self._backfill(cursors)
        finally:
            held, self._held = self._held or {}, None
            for channel, publications in held.items():
                # The back-fill delivered everything up to _last_seen; a held deletion
                # (no key) is always news.
                seen = self._last_seen.get(channel)
                fresh = [(p, e) for p, e in publications if e.key is None or seen is None or e.key > seen]
                if fresh:
                    self.dispatch(channel, [e for _, e in fresh], [p for p, _ in fresh])

    async def _resubscribe(self) -> dict[str, tuple[int, str] | int] | None:
        """One attempt; the new connection replaces the old only once it works.

        Returns each channel's back-fill cursor (the newest (ts, id) it delivered, or
        the ms it was joined at), or None if Redis is still away. Live events for
        those channels wait in ``_held`` until the back-fill is done.
        """
        async with self._lock:
            for channel in [c for c, listeners in self._listeners.items() if not listeners]:
                self._forget(channel)  # lingering: what it knew may be stale after the outage
            cursors: dict[str, tuple[int, str] | int] = {
                channel: self._last_seen.get(channel) or self._joined_at.get(channel, 0)
                for channel in self._listeners
            }
            assert self._redis is not None
            pubsub = self._redis.pubsub()
            self._held = {channel: [] for channel in cursors}
            try:
                await pubsub.connect()
                channels = list(self._listeners)
                if channels:
                    await pubsub.subscribe(*channels)
                    await self._await_confirmations(pubsub, set(channels))
            except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError):
                self._held = None
                await _close_quietly(pubsub)
                return None
            old, self._pubsub = self._pubsub, pubsub
            self._liveness.heard()
            await _close_quietly(old)
            for waiting in self._confirmations.values():
                if not waiting.done():
                    waiting.set_result(None)
            self._confirmations.clear()
            log.info("pub/sub reconnected; back-filling %d channels", len(cursors))
            return cursors

    async def _await_confirmations(self, pubsub: aioredis.client.PubSub, channels: set[str]) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while channels:
            if time.monotonic() > deadline:
                raise TimeoutError("subscription not confirmed")
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                channels.discard(message["channel"].decode())
            elif message["type"] == "message":
                self._handle([message])

    async def _backfill(self, cursors: dict[str, tuple[int, str] | int]) -> None:
        """Deliver each channel's history after its cursor: room messages from the
        room's history, DMs from the recipient's inbox."""
        for channel, cursor in cursors.items():
            kind, _, owner = channel.rpartition(":")
            try:
                if kind == "aicq:room":
                    after = cursor[1] if isinstance(cursor, tuple) else cursor
                    async for page in self._history.pages_after(owner, after, BACKFILL_PAGE):
                        if channel not in self._listeners:
                            break
                        self.dispatch(channel, [message_event(message) for message in page])
                    # Presence events are not history: who follows it gets the whole roster anew.
                    if self._roster is not None and any(
                            getattr(listener, "wants_presence", False) for listener in self._listeners.get(channel, ())):
                        self.dispatch(channel, [presence_event(owner, await self._roster(owner))])
                else:
                    dms = await self._history.dms_after(owner, cursor, BACKFILL_PAGE)
                    if dms and channel in self._listeners:
                        self.dispatch(channel, [dm_event(dm) for dm in dms])
            except Unavailable:
                log.warning("back-fill of %s failed; Redis unavailable", channel)
