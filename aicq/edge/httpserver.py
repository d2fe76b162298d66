"""uvicorn's HTTP/1.1 protocol, plus one ASGI extension: ``aicq.http``.

Server-Sent Events and long-poll responses outlive an ordinary request, and want
what ASGI's ``http.response.body`` cannot give them:

- write an event that was encoded once for every reader on this instance, without
  a task and a queue per reader, and see how much is waiting in the socket's write
  buffer, to bound it per stream (as ``wsserver.Socket`` does for a WebSocket);
- drop a reader that stopped reading, without awaiting a buffer that never drains;
- hear about the end of the request: the peer went away, or the server is shutting
  down. On SIGTERM uvicorn asks every connection to ``shutdown()`` and then waits
  for their responses to finish; an open stream would keep it waiting until the
  graceful timeout, so a long-lived response ends as soon as it is told to.

Everything else (parsing, keep-alive, the response head, the last chunk) is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "aicq.http"
SHUTDOWN, LOST = "shutdown", "lost"


class Flag:
    """asyncio.Event's set/clear/wait/is_set, with its waiter list made only when needed.

    uvicorn makes one or two asyncio.Event per HTTP connection; each allocates a
    deque of waiters up front. Long-lived streams hold thousands of connections.
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters = None

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)

class HttpConnection:
    """What a long-lived response may do beyond ASGI. Loop thread only.

    Bytes written with :meth:`offer` bypass uvicorn: the caller frames them as
    HTTP/1.1 chunks itself (the response must use chunked transfer encoding, which
    uvicorn chooses for a response without a Content-Length).
    """

    __slots__ = ("_ended", "_protocol", "_transport", "reason")

    def __init__(self, protocol: AICQHttpProtocol):
        self._protocol = protocol
        self._transport = protocol.transport
        self._ended: asyncio.Future[str] | None = None
        self.reason: str | None = None  # SHUTDOWN or LOST once the request is over

    @property
    def open(self) -> bool:
        """The connection can still carry bytes (``reason`` may say it should end)."""
        return not self._transport.is_closing()

    def offer(self, data: bytes, limit: int) -> bool:
        """Write ``data`` unless that would put more than ``limit`` bytes in the buffer.

        Returns False only when the peer is too slow; a closed connection drops the
        data and returns True, since there is no one left to slow down.
        """
        transport = self._transport
        if transport.is_closing():
            return True
        if transport.get_write_buffer_size() + len(data) > limit:
            return False
        transport.write(data)
        return True

    def cap_high_water(self, high: int) -> None:
        """Pause writing (see ``drain``) once ``high`` bytes wait, if that is lower
        than the transport's own mark."""
        if high < self._transport.get_write_buffer_limits()[1]:
            self._transport.set_write_buffer_limits(high=high)

    async def drain(self, timeout: float) -> bool:
        """Wait until the transport wants more data; False on timeout or when closed."""
        flow = self._protocol.flow
        if flow.write_paused:
            try:
                await asyncio.wait_for(flow.drain(), timeout)
            except TimeoutError:
                return False
        return self.open

    def abort(self) -> None:
        """Drop the connection now, whatever is still buffered."""
        self._transport.abort()

    def ending(self) -> asyncio.Future[str]:
        """Done at the end of the request, with SHUTDOWN (the server is stopping) or LOST.
        Await it shielded, or pass it to ``asyncio.wait``: it is shared."""
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self.reason is not None:
                self._ended.set_result(self.reason)
        return self._ended

    async def ended(self) -> str:
        """Wait for the end of the request: SHUTDOWN or LOST."""
        return await asyncio.shield(self.ending())

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self._ended is not None and not self._ended.done():
                self._ended.set_result(reason)


class AICQHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; each request's scope carries its HttpConnection.

    Event streams hold their connection for hours, thousands at a time: the two
    asyncio.Events uvicorn keeps per connection (and per request) are replaced by
    the lighter ``Flag`` above (each asyncio.Event allocates a
    760-byte deque up front)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current: HttpConnection | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = Flag()  # type: ignore[assignment]
        self.flow._is_writable_event.set()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.scope.get("path") is not None:  # not a WebSocket upgrade: an HTTP request
            self.cycle.message_event = Flag()  # type: ignore[assignment]  # its task has not run yet
            self.current = HttpConnection(self)
            self.scope["extensions"] = {EXTENSION: self.current}  # type: ignore[typeddict-unknown-key]

    def shutdown(self) -> None:
        if self.current is not None and self.cycle is not None and not self.cycle.response_complete:
            self.current.end(SHUTDOWN)
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current is not None:
            self.current.end(LOST)
        super().connection_lost(exc)


def connection(scope: Any) -> HttpConnection | None:
    """The request's HttpConnection; None when served by anything but AICQHttpProtocol."""
    return (scope.get("extensions") or {}).get(EXTENSION)
