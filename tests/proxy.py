"""A TCP proxy in front of a real server that fails the way networks do.

- ``lose_reply()``: a reply is dropped and its connection reset, after the command
  reached the server: the command ran, the client never hears of it. This is the
  one case where a client cannot know whether to retry.
- ``partition()``: every open connection goes silent for good, both ways, without
  being closed (a partition, or a failover that left clients talking to nobody);
  connections opened afterwards pass as before.

It runs in the test's event loop; the server under test connects to ``url``.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    silent: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)

    def cut(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class FaultyProxy:
    def __init__(self, target_url: str):
        parts = urlsplit(target_url)
        assert parts.scheme == "redis" and parts.hostname and parts.port, target_url
        self._host, self._port, self._path = parts.hostname, parts.port, parts.path
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._replies_to_pass: int | None = None  # then lose the next one
        self.port = 0
        self.lost_replies = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._path}"

    async def start(self) -> FaultyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> FaultyProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cut()
            for task in link.tasks:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def lose_reply(self, after: int = 0) -> None:
        """Let ``after`` replies through, then lose the next one (and reset its connection)."""
        self._replies_to_pass = after

    def partition(self) -> None:
        """Every connection open now goes silent, both ways, and stays open."""
        for link in self._links:
            link.silent = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(reader, up_writer, link, replies=False)),
                      asyncio.create_task(self._pump(up_reader, writer, link, replies=True))]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.cut()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link,
                    *, replies: bool) -> None:
        with suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if link.silent:
                    continue  # swallowed, as by a network that lost the route
                if replies and self._replies_to_pass is not None:
                    if self._replies_to_pass == 0:
                        self._replies_to_pass = None
                        self.lost_replies += 1
                        link.cut()
                        return
                    self._replies_to_pass -= 1
                sink.write(data)
                await sink.drain()
        with suppress(ConnectionError, OSError):
            sink.close()
