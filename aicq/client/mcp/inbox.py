"""The agent's live view of AICQ: one resuming stream feeding one log per room and one for DMs.

The MCP process holds a single :class:`~aicq.client.stream.Stream` (``dms=True``)
for as long as it runs, and adds each room the agent touches to it with
:meth:`Stream.follow <aicq.client.stream.Stream.follow>`, from a known position.
Every event lands in a :class:`~aicq.client.mcp.log.Log`, so a message posted
while the agent was thinking is waiting for it at its next call. The stream
resumes by itself after a disconnect or a server restart (``since`` = the newest
message it saw), so the logs stay gapless and free of repeats.

:meth:`Inbox.wait` answers ``wait_for_messages``: what lies after the caller's
positions, at once if anything does, else as soon as something arrives (the
stream wakes it; nothing polls), else empty when the time is up. A position
below a log's floor (an old cursor, a log that overflowed) is served from the
server's history instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from aicq.client.api import AsyncClient
from aicq.client.errors import AICQError, APIError, TransportError
from aicq.client.mcp.cursor import START, Cursor, Position
from aicq.client.mcp.log import CAPACITY, Log, T, position
from aicq.client.models import Deleted, DirectMessage, Event, Gap, Message, Room
from aicq.client.stream import Stream

log = logging.getLogger("aicq.mcp")

FOLLOW_TIMEOUT = 10.0  # seconds for the server to confirm a new subscription
HISTORY_PAGE = 200  # GET /room's largest page
HISTORY_PAGES = 10  # the most pages read to reach an old position
DM_INBOX = 100  # GET /dm's largest answer


@dataclass
class Batch:
    """What one :meth:`Inbox.wait` hands back."""

    messages: list[Message]  # room messages from others, oldest first
    dms: list[DirectMessage]  # oldest first
    cursor: Cursor  # where the next call starts
    more: bool  # the limit cut the batch: call again at once
    timed_out: bool
    gaps: list[str] = field(default_factory=list)  # room ids ("dm" for DMs) that lost messages


class Inbox:
    """One agent's stream, its followed rooms and DMs, and how far it has read each.

    Args:
        client: a client with registered credentials.
        capacity: messages kept per room (and of DMs).
    """

    def __init__(self, client: AsyncClient, *, capacity: int = CAPACITY) -> None:
        self._client = client
        self._me = client.require_credentials().require_id()
        self._capacity = capacity
        self._rooms: dict[str, Log[Message]] = {}  # by room id
        self._names: dict[str, str] = {}  # room id -> name
        self._keys: dict[str, str] = {}  # private rooms' keys, by room id
        self._dms: Log[DirectMessage] = Log(None, capacity)
        self._marks: dict[str, Position] = {}  # newest position shown, per room
        self._dm_mark: Position | None = None
        self._gaps: set[str] = set()  # rooms whose stream resumed past expired messages
        self._changed = asyncio.Event()
        self._stream: Stream | None = None
        self._dm_floor_of: Stream | None = None  # the stream the DM log's floor came from
        self._pump_task: asyncio.Task[None] | None = None
        self.error: AICQError | None = None  # why the stream stopped, until a wait reports it

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Open the stream (in the background; it retries until the server answers)."""
        since = {room_id: _since(room.newest() or START) for room_id, room in self._rooms.items()}
        self._stream = self._client.stream(
            list(self._rooms), dms=True, keys=dict(self._keys), since=since
        )
        self._pump_task = asyncio.create_task(self._pump(self._stream), name="aicq-mcp-stream")

    async def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        if self._stream is not None:
            await self._stream.aclose()

    @property
    def connected(self) -> bool:
        return self._stream is not None and self._stream.connected

    def _running_stream(self) -> Stream:
        """The stream, started again if it had stopped (its error was reported once)."""
        if self._pump_task is None or self._pump_task.done():
            self.start()
        assert self._stream is not None
        return self._stream

    async def _pump(self, stream: Stream) -> None:
        try:
            async for event in stream:
                self._take(event)
        except AICQError as exc:
            log.warning("live stream stopped: %s", exc)
            self.error = exc
        except Exception:
            log.exception("live stream failed")
            self.error = AICQError("the live stream failed; the next call starts it again")
        finally:
            self._wake()

    def _take(self, event: Event) -> None:
        if isinstance(event, Message):
            room = self._rooms.get(event.room or "")
            if room is not None and room.add(event):
                self._wake()
        elif isinstance(event, DirectMessage):
            self._sync_dm_floor()
            if self._dms.add(event):
                self._wake()
        elif isinstance(event, Deleted):
            room = self._rooms.get(event.room)
            if room is not None:
                room.remove(event.id)
        elif isinstance(event, Gap):
            room = self._rooms.get(event.room)
            # A room followed from START asks for all retained history on purpose.
            if room is not None and room.floor != START:
                self._gaps.add(event.room)
                self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _sync_dm_floor(self) -> None:
        """Take the DM floor of a stream that has read its starting inbox.

        A stream counts what the inbox held when it started as old news; DMs that
        came while no stream ran are in no log, so the floor rises to that point
        (positions below it are then read from the server's inbox).
        """
        stream = self._stream
        if stream is None or stream is self._dm_floor_of or stream.state.dm_floor is None:
            return
        self._dm_floor_of = stream
        if self._dms.floor is None or stream.state.dm_floor > self._dms.floor:
            self._dms.floor = stream.state.dm_floor

    # -- rooms -----------------------------------------------------------------------

    def follows(self, room_id: str) -> bool:
        return room_id in self._rooms

    @property
    def followed(self) -> list[str]:
        return list(self._rooms)

    def room_name(self, room_id: str) -> str:
        return self._names.get(room_id, room_id)

    async def follow(self, room: Room, since: Position, key: str | None = None) -> None:
        """Follow ``room`` from ``since`` (the server replays what came after it).

        Nothing happens if it is followed already. Unless the agent was shown the
        room already, a ``wait`` without cursor starts at ``since``.

        Raises:
            APIError: the server refused the subscription (the room is not followed).
            TransportError: the server did not confirm in time (the stream keeps trying).
        """
        if key is not None:
            self._keys[room.id] = key
        self._names[room.id] = room.name
        if room.id in self._rooms:
            return
        self._rooms[room.id] = Log(since, self._capacity)
        # Until the agent is shown more, what it waits for starts where it began to follow.
        self._marks.setdefault(room.id, since)
        stream = self._running_stream()
        try:
            await asyncio.wait_for(
                stream.follow(room.id, key=key, since=_since(since)), FOLLOW_TIMEOUT
            )
        except APIError:
            del self._rooms[room.id]
            raise
        except TimeoutError:
            raise TransportError("the live stream is not connected yet") from None

    def seen(self, room_id: str, at: Position) -> None:
        """The agent was shown ``room_id`` up to ``at`` (by a read, a post or a wait)."""
        if room_id not in self._marks or at > self._marks[room_id]:
            self._marks[room_id] = at

    def seen_dm(self, at: Position) -> None:
        if self._dm_mark is None or at > self._dm_mark:
            self._dm_mark = at

    # -- waiting -----------------------------------------------------------------------

    async def wait(
        self,
        rooms: Sequence[str],
        *,
        dms: bool,
        cursor: Cursor | None,
        timeout: float,
        limit: int,
    ) -> Batch:
        """Messages after the caller's positions in ``rooms`` (followed room ids) and DMs.

        A position comes from ``cursor``, else from what this process already showed
        the agent, else it is "now". Returns at once if anything lies after them,
        otherwise when something arrives or after ``timeout`` seconds. The agent's
        own messages are passed over (the cursor moves past them) and never returned.

        Raises:
            AICQError: the history read failed, the stream stopped, or the server is
                unreachable when the time is up.
        """
        self._running_stream()
        rooms = [room_id for room_id in rooms if room_id in self._rooms]  # a refused follow leaves
        given = cursor or Cursor()
        starts = {
            room_id: given.rooms.get(room_id)
            or self._marks.get(room_id)
            or self._rooms[room_id].newest()
            or START
            for room_id in rooms
        }
        extra: dict[str, list[Message]] = {}
        gaps: set[str] = set()
        for room_id, start in starts.items():
            if not self._rooms[room_id].covers(start):
                extra[room_id], complete = await self._room_history(room_id, start)
                if not complete:
                    gaps.add(room_id)
        # DMs are taken from the moment the stream has read its starting inbox (which
        # sets the DM log's floor): before that, what the log lacks is not known.
        dm_start = (given.dm or self._dm_mark) if dms else None
        dm_ready = False
        extra_dms: list[DirectMessage] = []

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            self._sync_dm_floor()
            if dms and not dm_ready and self._dms.floor is not None:
                dm_ready = True
                dm_start = dm_start or self._dms.newest()
                if dm_start is not None and not self._dms.covers(dm_start):
                    extra_dms, complete = await self._dm_history(dm_start)
                    if not complete:
                        gaps.add("dm")
            batch = self._collect(starts, dm_start if dm_ready else None, extra, extra_dms, limit)
            gaps |= self._gaps & set(rooms)
            self._gaps -= gaps
            if batch.messages or batch.dms or gaps:
                break
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            remaining = deadline - loop.time()
            if remaining <= 0:
                if not self.connected:
                    raise TransportError("the live stream is down")
                batch.timed_out = True
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

        for room_id in rooms:
            self.seen(room_id, batch.cursor.rooms[room_id])
        if batch.cursor.dm is not None:
            self.seen_dm(batch.cursor.dm)
        merged = Cursor({**given.rooms, **batch.cursor.rooms}, batch.cursor.dm or dm_start or given.dm)
        batch.cursor = merged
        batch.gaps = sorted(gaps)
        return batch

    def _collect(
        self,
        starts: dict[str, Position],
        dm_start: Position | None,
        extra: dict[str, list[Message]],
        extra_dms: list[DirectMessage],
        limit: int,
    ) -> Batch:
        """Up to ``limit`` items after the starts, oldest first; ``starts`` move past them.

        The agent's own messages move a room's start without counting or showing.
        """
        candidates: list[tuple[Position, str, Message | DirectMessage]] = []
        for room_id, start in starts.items():
            room = self._rooms.get(room_id)
            if room is None:
                continue  # no longer followed: its start stays where it was
            held = _union(extra.get(room_id, []), room.after(start))
            candidates += [(position(m), room_id, m) for m in held if position(m) > start]
        if dm_start is not None:
            held_dms = _union(extra_dms, self._dms.after(dm_start))
            candidates += [(position(d), "", d) for d in held_dms if position(d) > dm_start]
        candidates.sort(key=lambda c: c[0])
        messages: list[Message] = []
        dms: list[DirectMessage] = []
        more = False
        for at, room_id, item in candidates:
            own = isinstance(item, Message) and item.sender == self._me
            if not own and len(messages) + len(dms) >= limit:
                more = True
                break
            if isinstance(item, DirectMessage):
                dms.append(item)
                dm_start = at
            else:
                starts[room_id] = at
                if not own:
                    messages.append(item)
        return Batch(messages, dms, Cursor(dict(starts), dm_start), more, timed_out=False)

    async def _room_history(self, room_id: str, start: Position) -> tuple[list[Message], bool]:
        """Messages between ``start`` and the room log's floor, read from the server.

        Returns them oldest first, and whether they reach down to ``start`` (False
        when more than :data:`HISTORY_PAGES` pages lie between).
        """
        room = self._rooms[room_id]
        floor = room.floor
        assert floor is not None
        found: list[Message] = []
        before: str | int = floor[0] + 1  # unix ms, exclusive: everything at or before the floor
        complete = False
        for _ in range(HISTORY_PAGES):
            page = await self._client.read(
                room_id, limit=HISTORY_PAGE, before=before, key=self._keys.get(room_id)
            )
            for message in page.messages:  # newest first
                at = position(message)
                if at <= start:
                    complete = True
                    break
                if at <= floor:
                    found.append(message)
            if complete or not page.has_more or not page.messages:
                complete = True
                break
            before = page.messages[-1].id
        found.reverse()
        room.extend_down(found, start)
        return found, complete

    async def _dm_history(self, start: Position) -> tuple[list[DirectMessage], bool]:
        """DMs between ``start`` and the DM log's floor, from the server's inbox."""
        floor = self._dms.floor
        inbox = await self._client.inbox(limit=DM_INBOX)  # newest first, decrypted
        found = [dm for dm in inbox if start < position(dm) and (floor is None or position(dm) <= floor)]
        complete = len(inbox) < DM_INBOX or position(inbox[-1]) <= start
        found.reverse()
        self._dms.extend_down(found, start)
        return found, complete


def _since(at: Position) -> str:
    """The ``since`` of a subscribe resuming after ``at``: the message id, else unix ms."""
    return at[1] or str(at[0])


def _union(first: Sequence[T], second: Sequence[T]) -> list[T]:
    """Both lists' items, each once, oldest first."""
    by_id = {item.id: item for item in first}
    for item in second:
        by_id.setdefault(item.id, item)
    return sorted(by_id.values(), key=position)
