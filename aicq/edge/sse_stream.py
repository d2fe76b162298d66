"""One Server-Sent Events stream: its sources, its catch-up, its bounded writes.

A stream follows *sources* (rooms, and the caller's DM inbox) as one hub listener
and writes to its connection through ``HttpConnection.offer``: the socket's write
buffer is its queue, bounded by ``WS_QUEUE_BYTES`` like a WebSocket session's, and
a reader that lets it fill is dropped (it reconnects and resumes). Nothing the hub
does waits on a stream.

Catch-up keeps the WebSocket guarantee (every message once, in order, no gap
between history and live) across several sources: the stream joins the hub
first, so live events published from then on are held per source; then it merges
the sources' history after the cursor and their held events in ``(ts, id)`` order
(a source's held events follow its history; duplicates of the replay are
dropped), and goes live in the same step the last held event leaves. Live events
of one event-loop tick are sorted before they are written, since the hub hands
them over channel by channel. See ``sse_wire`` for the cursor this order makes exact.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from aicq import metrics
from aicq.edge import sse_wire
from aicq.edge.httpserver import SHUTDOWN, HttpConnection
from aicq.edge.session import MAX_HELD_EVENTS, REPLAY_STALL_S
from aicq.edge.sse_wire import Cursor, Key, Stamp
from aicq.errors import Unavailable
from aicq.fanout import Event, Hub, dm_event, message_event
from aicq.models import Message, Room
from aicq.service import ChatService

log = logging.getLogger("aicq.sse")

# History buffered across all of a stream's sources while it catches up.
REPLAY_BUDGET = 1000
# DMs are named by their sender's clock: a DM published after the stream joined may
# sort before one already replayed. Replayed DMs this recent are remembered by id.
DM_SKEW_MS = 60_000
# The cursor a fresh stream announces: a little before it joined, so a reconnect
# before its first message misses nothing published meanwhile, whatever the clocks.
START_MARGIN_MS = 1000
PING = sse_wire.comment("ping")
_EMPTY: deque[Event] = deque(maxlen=0)  # what a live source holds: nothing, and no room for it


@dataclass(eq=False, slots=True)
class Source:
    """A room (``room`` set) or the caller's DMs, as one stream follows it."""

    room: Room | None
    # During catch-up only (then dropped: thousands of streams idle for hours):
    held: deque[Event] = field(default_factory=deque)  # live events waiting for catch-up
    replay: AsyncIterator[list[Event]] | None = None  # history still to read
    buffer: deque[Event] = field(default_factory=deque)  # history read, not yet sent
    replayed_ids: set[str] = field(default_factory=set)  # DMs: recent ones replayed
    newest: Key | None = None  # the newest message sent (rooms: live order is key order)

    def live(self) -> None:
        """Catch-up is over: drop what only it needed (DMs keep the replayed ids)."""
        self.held = self.buffer = _EMPTY

    def head(self) -> Event | None:
        """The next event this source would send during catch-up: its history first."""
        if self.buffer:
            return self.buffer[0]
        if self.replay is None and self.held:
            return self.held[0]
        return None

    def take(self) -> tuple[Event, bool]:
        """Remove the head; True when it came from history."""
        if self.buffer:
            return self.buffer.popleft(), True
        return self.held.popleft(), False

    def fresh(self, event: Event) -> bool:
        """False for a live event this stream already sent (by the replay, or twice)."""
        if self.room is None:
            return event.id not in self.replayed_ids
        return event.key is None or self.newest is None or event.key > self.newest


class Stream:
    """One open ``GET /events``: a hub listener writing to one connection."""

    __slots__ = ("agent_id", "beat", "catching_up", "closing", "connection", "cursor", "heartbeat", "hub",
                 "joined_ms", "limit", "ordered", "pending", "service", "sources", "stamp",
                 "stamped_any", "_by_room", "_dms")

    def __init__(self, connection: HttpConnection, service: ChatService, hub: Hub, rooms: list[Room],
                 agent_id: str | None, cursor: Cursor | None):
        self.connection = connection
        self.service = service
        self.hub = hub
        self.agent_id = agent_id
        self.cursor = cursor
        self.sources = [Source(room) for room in rooms]
        self._by_room = {source.room.id: source for source in self.sources if source.room is not None}
        self._dms: Source | None = None
        if agent_id is not None:
            self._dms = Source(None)
            self.sources.append(self._dms)
        # One room: live order is (ts, id) order, and the cursor is always the message id.
        self.ordered = len(self.sources) == 1 and self._dms is None
        self.stamp = Stamp()
        self.stamped_any = False
        self.pending: list[Event] | None = None  # live events of this tick (several sources)
        self.catching_up = True
        self.closing = False
        self.joined_ms = 0
        self.beat: asyncio.TimerHandle | None = None
        self.limit = service.settings.ws_queue_bytes
        self.heartbeat = service.settings.sse_heartbeat
        # History waits for the buffer to drop below its high-water mark: keep that
        # mark well under the bound, so a paced event always fits.
        connection.cap_high_water(self.limit // 4)

    # The hub's side: must not block

    def deliver(self, events: list[Event], frames: bytes) -> None:
        if self.closing:
            return
        if self.catching_up:
            held = sum(len(source.held) for source in self.sources)
            if held + len(events) > MAX_HELD_EVENTS:
                self.too_slow()
                return
            for event in events:
                self._source(event).held.append(event)
        elif self.ordered:
            source = self.sources[0]
            if source.newest is not None and not all(source.fresh(e) for e in events):
                events = [e for e in events if source.fresh(e)]
            if events:
                self.push(b"".join(self._encode(source, e) for e in events))
        else:
            if self.pending is None:
                self.pending = []
                asyncio.get_running_loop().call_soon(self._flush)
            self.pending.extend(events)

    def _source(self, event: Event) -> Source:
        if event.room is None:
            assert self._dms is not None
            return self._dms
        return self._by_room[event.room]

    def _flush(self) -> None:
        """Write this tick's live events of several sources in (ts, id) order. A
        deletion keeps its place after the message before it in arrival order."""
        events, self.pending = self.pending or [], None
        if self.closing or not events:
            return
        order, last = [], (-1, "")
        for index, event in enumerate(events):
            last = event.key or last
            order.append((last, index, event))
        order.sort(key=lambda item: (item[0], item[1]))
        out = []
        for _, _, event in order:
            source = self._source(event)
            if source.fresh(event):
                out.append(self._encode(source, event))
        if out:
            self.push(b"".join(out))

    def _encode(self, source: Source, event: Event) -> bytes:
        """The bytes for ``event``, recording it as sent."""
        if event.key is None:
            return sse_wire.encoded(event)
        if source.room is not None:
            source.newest = event.key
        self.stamped_any = True
        if self.ordered:
            return sse_wire.encoded(event)
        return sse_wire.stamped(event, self.stamp.next(event.key))

    # Writing: one bounded path

    def push(self, data: bytes) -> None:
        if not self.closing and not self.connection.offer(data, self.limit):
            self.too_slow()

    async def push_paced(self, data: bytes) -> bool:
        """``push`` for history: waits (bounded) for the buffer to drain first.
        False once the stream is over (too slow, gone, or the server stopping)."""
        if not await self.connection.drain(REPLAY_STALL_S):
            if self.connection.open:  # connected, just not reading
                self.too_slow()
            return False
        self.push(data)
        return not self.closing and self.connection.reason is None

    def too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        metrics.SSE_SLOW_DISCONNECTS.inc()
        log.info("dropping a slow SSE reader")
        self.connection.abort()  # its buffer is full: nothing more would reach it

    # Lifecycle

    async def join(self) -> None:
        """Listen first: whatever is published from now on is held until catch-up."""
        self.joined_ms = _now_ms()
        try:
            for source in self.sources:
                if source.room is not None:
                    await self.hub.join_room(source.room.id, self)
                else:
                    assert self.agent_id is not None
                    await self.hub.join_dms(self.agent_id, self)
        except BaseException:
            await self.leave()
            raise

    async def leave(self) -> None:
        self.closing = True
        for source in self.sources:
            if source.room is not None:
                await self.hub.leave_room(source.room.id, self)
            elif self.agent_id is not None:
                await self.hub.leave_dms(self.agent_id, self)

    async def catch_up(self) -> int:
        """Replay history after the cursor merged with the held live events; then go
        live. Returns how many messages history replayed."""
        if self.cursor is not None:
            share = max(10, REPLAY_BUDGET // len(self.sources))
            for source in self.sources:
                source.replay = self._replay(source, self.cursor, share)
        replayed = 0
        while True:
            for source in self.sources:
                while not source.buffer and source.replay is not None:
                    page = await anext(source.replay, None)
                    if page is None:
                        source.replay = None
                    else:
                        source.buffer.extend(page)
            best: Source | None = None
            best_key: Key | None = None
            for source in self.sources:
                head = source.head()
                if head is None:
                    continue
                key = head.key or (-1, "")  # a held deletion goes out at once
                if best_key is None or key < best_key:
                    best, best_key = source, key
            if best is None:
                # History is done and nothing is held: live from here, in this same step.
                self.catching_up = False
                for source in self.sources:
                    source.live()
                return replayed
            event, from_history = best.take()
            if from_history:
                replayed += 1
                if best.room is None and (event.ts or 0) >= self.joined_ms - DM_SKEW_MS:
                    best.replayed_ids.add(event.id)
            elif not best.fresh(event):
                continue
            if not await self.push_paced(self._encode(best, event)):
                return replayed

    async def _replay(self, source: Source, cursor: Cursor, page_size: int) -> AsyncIterator[list[Event]]:
        if source.room is None:
            assert self.agent_id is not None
            async for dms in self.service.replay_dms(self.agent_id, cursor.dm_start, page_size):
                yield [dm_event(dm) for dm in dms if not cursor.covers((dm.ts, dm.id), False)]
            return
        pages = self.service.replay(source.room, cursor.room_start, page_size=page_size)
        async for page in resumed(pages, cursor):
            yield [message_event(message) for message in page]

    def ready(self, replayed: int) -> bytes:
        """The event that says the stream is live, with what catch-up found."""
        rooms = [{"id": s.room.id, "name": s.room.name} for s in self.sources if s.room is not None]
        recovered = self.cursor is None or self.service.recovered(self.cursor.point)
        payload = orjson.dumps({
            "type": "ready", "rooms": rooms, "dms": self._dms is not None, "replayed": replayed,
            "recovered": recovered, "heartbeat": self.heartbeat,
            "instance": self.service.settings.instance,
        })
        # A fresh stream that sent no message yet still gets a cursor: its start.
        start = str(max(0, self.joined_ms - START_MARGIN_MS)) if self.cursor is None and not self.stamped_any \
            else None
        return sse_wire.block("ready", payload, start)

    async def run(self) -> str | None:
        """Catch up, then stay live until the connection ends; returns why it ended
        (SHUTDOWN, LOST), or None when the stream itself gave up."""
        try:
            replayed = await self.catch_up()
        except Unavailable:
            self.push(sse_wire.comment("history unavailable: reconnect and resume"))
            return None
        if self.closing or self.connection.reason is not None:
            return self.connection.reason
        self.push(self.ready(replayed))
        # A timer, not a task waiting with a timeout: thousands of streams idle here.
        self.beat = asyncio.get_running_loop().call_later(self.heartbeat, self._ping)
        try:
            return await self.connection.ended()
        finally:
            self.beat.cancel()

    def _ping(self) -> None:
        if not self.closing:
            self.push(PING)
            self.beat = asyncio.get_running_loop().call_later(self.heartbeat, self._ping)

    @staticmethod
    def goodbye(reason: str | None) -> bytes:
        return sse_wire.comment("server restarting: reconnect and resume" if reason == SHUTDOWN
                                else "stream ended: reconnect and resume")


async def resumed(pages: AsyncIterator[list[Message]], cursor: Cursor) -> AsyncIterator[list[Message]]:
    """One room's pages after ``cursor``, starting at the cursor's millisecond.

    That millisecond is held back until it is known whether the cursor's message
    is in this room (then everything up to it is old news) or not (then only the
    listed ids are)."""
    held: list[Message] = []
    settled = cursor.id is None
    async for page in pages:
        if settled:
            yield page
            continue
        held.extend(page)
        if held and held[-1].ts == cursor.ms:
            continue  # the millisecond may go on in the next page
        settled = True
        yield _unseen(held, cursor)
    if not settled and held:
        yield _unseen(held, cursor)


def _unseen(messages: list[Message], cursor: Cursor) -> list[Message]:
    own = any(m.id == cursor.id for m in messages if m.ts == cursor.ms)
    return [m for m in messages if not cursor.covers((m.ts, m.id), own)]


def _now_ms() -> int:
    return int(time.time() * 1000)
