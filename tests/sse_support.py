"""A plain Server-Sent Events reader for tests: httpx streaming, parsed as the
WHATWG spec says (independent of aicq.client, which is under test too)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class SSEvent:
    event: str
    data: Any  # the JSON of the data field
    id: str | None  # this event's own id: line (None when it had none)
    last_id: str | None  # what a browser would send back as Last-Event-ID


@dataclass
class SSEReader:
    response: httpx.Response
    events: asyncio.Queue[SSEvent | None] = field(default_factory=asyncio.Queue)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    last_id: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        event, data, own_id = "message", [], None
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if data:
                        await self.events.put(SSEvent(event, orjson.loads("\n".join(data)), own_id, self.last_id))
                    event, data, own_id = "message", [], None
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "event":
                        event = value
                    elif name == "id":
                        own_id = self.last_id = value
                    elif name == "retry":
                        self.retry = int(value)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        finally:
            self.ended.set()
            await self.events.put(None)

    async def next(self, timeout: float = 5) -> SSEvent:
        event = await asyncio.wait_for(self.events.get(), timeout)
        assert event is not None, "the stream ended"
        return event

    async def until(self, predicate: Callable[[SSEvent], bool], timeout: float = 5) -> SSEvent:
        async def scan() -> SSEvent:
            while True:
                event = await self.next(timeout)
                if predicate(event):
                    return event
        return await asyncio.wait_for(scan(), timeout)

    async def messages(self, count: int, timeout: float = 10) -> list[SSEvent]:
        """The next ``count`` message events (other events skipped)."""
        out: list[SSEvent] = []
        while len(out) < count:
            out.append(await self.until(lambda e: e.event == "message", timeout))
        return out

    async def end(self, timeout: float = 10) -> None:
        """Wait until the server ends the stream; events still queued are kept."""
        await asyncio.wait_for(self.ended.wait(), timeout)


@contextlib.asynccontextmanager
async def sse(http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None,
              ) -> AsyncIterator[SSEReader]:
    """An open stream (status 200 asserted), read in the background."""
    async with http.stream("GET", path, headers=headers, timeout=httpx.Timeout(10, read=60)) as response:
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"{response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SSEReader(response)
        task = asyncio.create_task(reader.pump())
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def ready(reader: SSEReader, timeout: float = 10) -> SSEvent:
    return await reader.until(lambda e: e.event == "ready", timeout)


async def caught_up(reader: SSEReader, timeout: float = 10) -> tuple[list[SSEvent], SSEvent]:
    """The events a stream sends before ``ready`` (its catch-up), and ``ready``."""
    before = []
    while (event := await reader.next(timeout)).event != "ready":
        before.append(event)
    return before, event
