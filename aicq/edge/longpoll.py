"""Long-poll: ``GET /room/{id}`` and ``GET /dm`` with ``wait``.

Answer at once when anything newer than ``after`` exists; otherwise hold the
request as a hub listener (no Redis polling) until a message arrives or ``wait``
seconds pass (then an empty list). The request joins the hub *before* it reads
history, so a message published between the read and the wait is not missed.

The answer lists the messages after ``after`` oldest first, up to ``limit``, with
``has_more`` when more are waiting: the last one is the next ``after``. A server
that is shutting down answers its waiting requests at once (with what it has) so
that clients poll another instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from aicq import metrics
from aicq.edge.httpserver import HttpConnection
from aicq.fanout import Event, Hub
from aicq.service import Caller, ChatService
from aicq.validation import ulid_ms

Key = tuple[int, str]


class Waiter:
    """One waiting request, as a hub listener: keeps the events of one kind."""

    __slots__ = ("arrived", "events", "kind", "limit")

    def __init__(self, kind: str, limit: int):
        self.kind = kind
        self.limit = limit
        self.events: list[Event] = []
        self.arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def deliver(self, events: list[Event], frames: bytes) -> None:
        for event in events:
            if event.kind == self.kind and len(self.events) < self.limit:
                self.events.append(event)
        if self.events and not self.arrived.done():
            self.arrived.set_result(None)

    async def wait(self, after: Key | None, seconds: float, connection: HttpConnection | None) -> list[Any]:
        """The public form of the first messages newer than ``after`` to arrive within
        ``seconds``; [] when none did, or when the request ended first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        metrics.LONGPOLL_WAITING.inc()
        try:
            while True:
                fresh = [e for e in self.events if after is None or (e.key is not None and e.key > after)]
                if fresh:
                    return [orjson.loads(e.payload)["msg"] for e in fresh]
                self.events.clear()
                if self.arrived.done():
                    self.arrived = loop.create_future()
                remaining = deadline - loop.time()
                if remaining <= 0 or (connection is not None and connection.reason is not None):
                    return []
                wake: set[asyncio.Future[Any]] = {self.arrived}
                if connection is not None:
                    wake.add(connection.ending())
                await asyncio.wait(wake, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            metrics.LONGPOLL_WAITING.dec()


def key_after(cursor: int | str | None) -> Key | None:
    """The (ts, id) every answered message must exceed (for unix ms: any id of a later ms)."""
    if cursor is None:
        return None
    if isinstance(cursor, str):
        return (ulid_ms(cursor), cursor)
    return (cursor, "~")  # '~' sorts after every id character


async def _held(
    join: Callable[[Waiter], Awaitable[None]], leave: Callable[[Waiter], Awaitable[None]],
    read: Callable[[], Awaitable[list[Any]]] | None, kind: str, after: Key | None, limit: int,
    wait: float, connection: HttpConnection | None,
) -> tuple[list[Any], bool]:
    """Listen, read history after the cursor (``read``, when given once listening),
    wait if it had nothing: (up to ``limit`` messages oldest first, whether more wait)."""
    waiter = Waiter(kind, limit + 1)
    await join(waiter)
    try:
        found = await read() if read is not None else []
        if not found and wait > 0:
            found = await waiter.wait(after, wait, connection)
    finally:
        await leave(waiter)
    return found[:limit], len(found) > limit


async def room_after(service: ChatService, hub: Hub, connection: HttpConnection | None, caller: Caller,
                     ref: str, key: str | None, cursor: int | str | None, limit: int,
                     wait: float) -> dict[str, Any]:
    room = await service.room(ref, key, caller)

    after = key_after(cursor)

    async def read() -> list[Any]:
        assert cursor is not None and after is not None
        newest = hub.newest(room.id)
        if newest is not None and newest <= after:
            return []  # the client has the newest this hub delivered: nothing newer exists yet
        return [m.to_public() for m in await service.messages_after(room, cursor, limit + 1)]

    messages, more = await _held(
        lambda w: hub.join_room(room.id, w), lambda w: hub.leave_room(room.id, w),
        read if cursor is not None else None, "message", after, limit, wait, connection)
    return {"room": {"id": room.id, "name": room.name}, "messages": messages, "has_more": more}


async def dms_after(service: ChatService, hub: Hub, connection: HttpConnection | None, caller: Caller,
                    cursor: int | str | None, limit: int, wait: float) -> dict[str, Any]:
    agent = caller.require_agent()
    after = key_after(cursor)

    async def read() -> list[Any]:
        assert after is not None
        start: Key | int = after if isinstance(cursor, str) else after[0] + 1
        return [dm.to_public() for dm in await service.dms_after(caller, start, limit + 1)]

    messages, more = await _held(
        lambda w: hub.join_dms(agent.id, w), lambda w: hub.leave_dms(agent.id, w),
        read if cursor is not None else None, "dm", after, limit, wait, connection)
    return {"messages": messages, "has_more": more}
