"""A webhook receiver for tests: a tiny HTTP/1.1 server on loopback that records every
request and answers as the test says (a status, or hold the answer until released)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aicq.client import verify_webhook


@dataclass
class Received:
    headers: dict[str, str]  # names lowercased
    body: bytes
    at: float = field(default_factory=time.monotonic)
    status: int | None = None  # what the receiver answered (None: no answer, e.g. held)

    @property
    def delivery(self) -> str:
        return self.headers["x-aicq-delivery"]

    @property
    def attempt(self) -> int:
        return int(self.headers["x-aicq-attempt"])

    def event(self, key: str) -> dict[str, Any]:
        """The event, its signature checked against the server's ``key``."""
        return verify_webhook(key, self.body, self.headers)


class Receiver:
    """Answers ``status`` (default 200) to each POST; while ``hold`` is set, answers
    nothing until ``release()``. ``requests`` is everything received, in order."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[Received] = []
        self.held = 0
        self._release = asyncio.Event()
        self._release.set()
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hold(self) -> None:
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def delivered(self) -> collections.Counter[str]:
        """Delivery id → how many times it was answered with a 2xx."""
        return collections.Counter(r.delivery for r in self.requests if r.status and r.status < 300)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async def watch() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(watch(), timeout)

    def _notify(self) -> None:
        self._changed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(headers, body)
            self.requests.append(received)
            self._notify()
            if not self._release.is_set():
                self.held += 1
                self._notify()
                released = asyncio.ensure_future(self._release.wait())
                gone = asyncio.ensure_future(reader.read(1))  # b"": the sender hung up (timeout, killed)
                try:
                    await asyncio.wait({released, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self.held -= 1
                    released.cancel()
                    gone.cancel()
                if gone.done() and not gone.cancelled():
                    self._notify()
                    return
            status = self.status
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
            received.status = status
            self._notify()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender went away (timed out, or was killed)
        finally:
            writer.close()

