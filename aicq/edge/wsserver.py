"""uvicorn's sans-I/O WebSocket protocol, plus one ASGI extension: ``aicq.socket``.

Fan-out wants what ASGI's ``websocket.send`` cannot give:

- write a frame that was serialised once for every subscriber (server frames are
  unmasked, so the same bytes serve every connection);
- see how much is waiting in the socket's write buffer, to bound it per session;
- close a reader that stopped reading, and abort it if the closing handshake
  does not finish, without awaiting a buffer that will never drain.

Everything else (handshake, pings, close codes, shutdown with 1012) is uvicorn's.

The contract with uvicorn (its internals, not its API; pinned in pyproject.toml and
checked by tests/test_uvicorn_contract.py on every run):

- attributes read or written: ``transport``, ``conn`` (websockets' ``ServerProtocol``),
  ``loop``, ``queue`` and ``writable`` (replaced by ``Mailbox`` and ``Flag``, so uvicorn
  may call only ``put_nowait``/``get``/``empty`` and ``set``/``clear``/``wait``),
  ``close_sent``, ``close_timer``, ``handshake_initiated``, ``request``, ``response``,
  ``scope``;
- hooks overridden, each calling uvicorn's own: ``data_received``, ``handle_connect``
  (``scope`` is built before the app runs), ``start_keepalive`` (called once the
  handshake response is written);
- behaviour: ``pause_writing``/``resume_writing`` clear and set ``writable``; a close
  frame answering ours (``close_sent`` and ``close_timer`` set) cancels the timer and
  closes the transport; ``run_asgi`` leaves the transport open while ``close_timer`` is
  set; shutdown closes open sessions with 1012.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

CLOSE_DEADLINE_S = 5.0


class Socket:
    """What a session may do to its connection beyond ASGI. Loop thread only."""

    __slots__ = ("_conn", "_protocol", "_transport")

    def __init__(self, protocol: AICQWebSocketProtocol):
        self._protocol = protocol
        # Cached: `offer` runs once per delivery, the hottest line in the server.
        self._transport = protocol.transport
        self._conn = protocol.conn

    @property
    def open(self) -> bool:
        return self._conn.state is State.OPEN and not self._transport.is_closing()

    def offer(self, frames: bytes, limit: int) -> bool:
        """Write ``frames`` unless that would put more than ``limit`` bytes in the buffer.

        Returns False only when the peer is too slow; a closed connection drops the
        frames and returns True, since there is no one left to slow down.
        """
        transport = self._transport
        if self._conn.state is not State.OPEN or transport.is_closing():
            return True
        if transport.get_write_buffer_size() + len(frames) > limit:
            return False
        transport.write(frames)
        return True

    def cap_high_water(self, high: int) -> None:
        """Pause writing (see ``drain``) once ``high`` bytes wait, if that is lower
        than the transport's own mark."""
        transport = self._transport
        current_high = transport.get_write_buffer_limits()[1]
        if high < current_high:
            transport.set_write_buffer_limits(high=high)

    async def drain(self, timeout: float) -> bool:
        """Wait until the transport wants more data; False on timeout or close."""
        try:
            await asyncio.wait_for(self._protocol.writable.wait(), timeout)
        except TimeoutError:
            return False
        return self.open

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; abort the connection if it is not done in 5 s."""
        protocol = self._protocol
        if not self.open:
            return
        protocol.conn.send_close(code, reason)
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        protocol.close_timer = protocol.loop.call_later(CLOSE_DEADLINE_S, protocol.transport.abort)


class Mailbox:
    """The part of asyncio.Queue uvicorn's protocol uses: put_nowait, get, empty.

    One per connection, and one reader (the ASGI app's receive), so it needs no
    deques of getters and putters: an asyncio.Queue allocates four 760-byte deque
    blocks up front; this allocates a list when something is first put in it.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = []
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        assert self._waiter is None, "a Mailbox has one reader"
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        assert self._items is not None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class Flag:
    """asyncio.Event's set/clear/wait/is_set, with its waiter list made only when needed."""

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


class AICQWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Tens of thousands of these live at once: lighter stand-ins for the two
        # asyncio primitives each connection holds (see Mailbox).
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the upgrade request itself (e.g. 431 for a header line
            # over 8 KB) and queued its answer; uvicorn only writes after a parsed
            # request, so without this the client would wait forever.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def handle_connect(self, event: object) -> None:
        super().handle_connect(event)  # type: ignore[arg-type]
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"]["aicq.socket"] = Socket(self)

    def start_keepalive(self) -> None:
        # Called once the handshake response is written: the parsed request and the
        # response are never read again, and would otherwise live (~1.5 KiB) as long
        # as the connection.
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()
