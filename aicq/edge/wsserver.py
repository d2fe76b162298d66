"""WebSocket connections: uvicorn's handshake, then a lean `Socket` of our own.

uvicorn (with websockets' handshake code) parses the upgrade request, runs the ASGI
app until it accepts or refuses, and writes the answer (101, 403, 431, 500). An app
that wants the connection for itself takes the ``aicq.socket`` ASGI extension, a
`Socket`, calls ``socket.serve(handler)`` and then accepts: as the 101 goes out the
transport is handed to the Socket, the handshake protocol with its parser, scope
and ASGI task is dropped, and the app's coroutine may return. From then on:

- incoming frames are read by `wsframes.FrameReader`; the handler gets each
  complete message (``on_message``) and, once, ``on_close`` as soon as the
  connection stops being open (either side's close, a violation, the peer gone);
- the app writes frames serialised once for every subscriber (``offer``: server
  frames are unmasked, so the same bytes serve every connection), sees how much
  waits in the write buffer to bound it, and closes a reader that stopped reading,
  aborting it if the closing handshake does not finish in 5 s;
- nothing runs per connection while it is idle: no task, no timer. The app calls
  ``beat()`` on every socket once per heartbeat interval (one sweeper for all).

An idle session is then a transport, a Socket and the app's own objects, instead
of a suspended ASGI stack, a scope, a websockets protocol and a keepalive timer.
Connections the app does not adopt are served by uvicorn exactly as before (and
only they use uvicorn's ``ws_ping_interval``/``ws_ping_timeout``).

uvicorn internals relied on (checked with uvicorn 0.54, websockets 17), all of
``uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol``:

- ``handle_connect(event)``: called with websockets' parsed ``Request``; for a 101
  it sets ``self.scope`` (with an ``"extensions"`` dict) and schedules ``run_asgi``.
- ``start_keepalive()``: called by ``send`` right after it writes the 101, and
  nowhere else. Overridden: the handoff point.
- ``run_asgi()``: the ASGI task's coroutine. Replaced; the replacement uses
  ``app``, ``scope``, ``receive``, ``send``, ``logger``, ``send_500_response()``,
  ``handshake_complete``, ``close_timer`` as uvicorn's own does, and
  ``uvicorn.protocols.utils.ClientDisconnected``.
- ``transport``, ``config.ws_max_size`` (the message limit), ``handshake_initiated``,
  ``connections`` (the server's set: on shutdown uvicorn calls ``shutdown()`` on
  each member and waits for the set to empty, so a Socket replaces its protocol in it).
- ``conn``, websockets' ``ServerProtocol``: ``handshake_exc``, ``data_to_send()``,
  and ``parser`` (a generator holding the upgrade request; closed at the handoff).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from aicq.edge import wsframes
from aicq.edge.wsframes import Close, FrameReader, Message, Ping, Violation

CLOSE_DEADLINE_S = 5.0
CLOSE_RESTART = 1012  # SIGTERM: reconnect elsewhere and resume
CLOSE_KEEPALIVE = 1011  # what websockets and uvicorn send a silent peer


class Handler(Protocol):
    """What a Socket tells the app that adopted it. Loop thread; must not block."""

    def on_message(self, text: str | None) -> None:
        """A complete message from the peer: its text, or None for a binary one."""

    def on_close(self) -> None:
        """The connection is no longer open (closing or gone). Called once."""


class Socket(asyncio.Protocol):
    """One adopted WebSocket connection after its handshake: the transport's protocol."""

    __slots__ = ("_close_timer", "_closing", "_connections", "_drained", "_heard", "_high", "_limit",
                 "_pinged", "_reader", "_reading_paused", "_transport", "_write_paused", "handler")

    def __init__(self, transport: asyncio.Transport, max_message: int, connections: set[Any]):
        self._transport = transport
        self._reader = FrameReader(max_message)
        self._connections = connections
        self.handler: Handler | None = None
        self._closing = False
        self._heard = True  # since the last heartbeat ping
        self._pinged = False
        self._reading_paused = False
        self._write_paused = False
        self._high = transport.get_write_buffer_limits()[1]
        self._limit = 1 << 30  # until the app sets its own (bound)
        self._drained: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    def serve(self, handler: Handler) -> None:
        """Adopt the connection once it is accepted: ``handler`` gets its messages."""
        self.handler = handler

    @property
    def adopted(self) -> bool:
        """Whether this Socket serves the connection (the 101 went out)."""
        return self._transport.get_protocol() is self

    # What the app does

    @property
    def open(self) -> bool:
        return not self._closing

    def bound(self, limit: int, high: int) -> None:
        """Bound the write buffer: ``offer`` refuses what would put more than ``limit``
        bytes in it, and writing pauses (see ``drain``) past ``high`` bytes, if that is
        lower than the transport's own mark."""
        self._limit = limit
        if high < self._high:
            self._transport.set_write_buffer_limits(high=high)
            self._high = self._transport.get_write_buffer_limits()[1]

    def offer(self, frames: bytes) -> bool:
        """Write ``frames`` unless that would pass the bound (see ``bound``).

        Returns False only when the peer is too slow; a connection that is closing
        drops the frames and returns True, since there is no one left to slow down.
        """
        if self._closing:
            return True
        transport, limit = self._transport, self._limit
        # Unless writing is paused, the buffer holds at most the high-water mark (asyncio's
        # flow-control contract): then the bound needs no look at the buffer.
        if (self._write_paused or self._high + len(frames) > limit) and \
                transport.get_write_buffer_size() + len(frames) > limit:
            return False
        transport.write(frames)
        return True

    async def drain(self, timeout: float) -> bool:
        """Wait until the transport wants more data; False on timeout or close. One waiter."""
        if self._write_paused and not self._closing:
            assert self._drained is None, "one drain at a time"
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._drained, timeout)
            except TimeoutError:
                return False
            finally:
                self._drained = None
        return not self._closing

    def pause_reading(self) -> None:
        """Read nothing more until ``resume_reading``: the handler has enough to do."""
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; abort the connection if it is not done in 5 s."""
        if self._closing:
            return
        self._transport.write(wsframes.close_frame(code, reason))
        self._stop()
        self.resume_reading()  # the peer's answer is what ends the handshake
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_DEADLINE_S, self._transport.abort)

    def beat(self) -> None:
        """Once per heartbeat interval: ping the peer, or close it (1011) if it sent
        nothing since the previous ping. So a peer silent for two intervals is closed.
        """
        if self._closing or self._reading_paused:  # paused: we are not listening, it is not silent
            return
        if self._pinged and not self._heard:
            self._fail(CLOSE_KEEPALIVE, "keepalive ping timeout")
            return
        self._pinged, self._heard = True, False
        self._transport.write(wsframes.PING_FRAME)

    # What uvicorn and the transport call

    def take_over(self) -> None:
        """The 101 is written: this Socket becomes the transport's protocol."""
        assert self.handler is not None
        self._transport.set_protocol(self)
        self._connections.add(self)

    def shutdown(self) -> None:
        """uvicorn's SIGTERM: close with 1012, so the client resumes on another instance;
        drop a peer whose buffer has not drained in 5 s."""
        if not self._closing:
            self._transport.write(wsframes.close_frame(CLOSE_RESTART))
            self._stop()
        self._transport.close()
        if self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_DEADLINE_S, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._transport.is_closing():  # closed after a violation or the peer's close
            return
        self._heard = True
        for event in self._reader.feed(data):
            if type(event) is Message:
                if not self._closing and self.handler is not None:
                    self.handler.on_message(event.text)
            elif type(event) is Ping:
                if not self._closing:
                    self._transport.write(wsframes.control_frame(wsframes.PONG, event.payload))
            elif type(event) is Close:
                if not self._closing:  # the peer starts the closing handshake: echo, then end
                    self._transport.write(wsframes.control_frame(wsframes.CLOSE, event.payload))
                    self._stop()
                self._transport.close()
            elif type(event) is Violation:
                self._fail(event.code, event.reason)
            # a Pong only proves the peer is there: _heard

    def eof_received(self) -> bool | None:
        return None  # close the transport: a peer that half-closes is gone

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._stop()
        self.handler = None  # the handler holds this Socket: let both go

    # Internals

    def _fail(self, code: int, reason: str) -> None:
        """Close at once: the peer broke the protocol or went silent."""
        if not self._closing:
            self._transport.write(wsframes.close_frame(code, reason))
            self._stop()
        self._transport.close()

    def _stop(self) -> None:
        """The connection is no longer open: tell the handler, once; a drain waits no more."""
        if self._closing:
            return
        self._closing = True
        self._wake_drain()
        if self.handler is not None:
            self.handler.on_close()

    def _wake_drain(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class AICQWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, until an app adopts the connection (see module doc)."""

    socket: Socket | None = None
    handed_over = False  # True once the connection belongs to its Socket

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the upgrade request itself (e.g. 431 for a header line
            # over 8 KB) and queued its answer; uvicorn only writes after a parsed
            # request, so without this the client would wait forever.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if getattr(self, "scope", None) is not None and self.transport is not None:
            self.socket = Socket(self.transport, self.config.ws_max_size, self.connections)
            self.scope["extensions"]["aicq.socket"] = self.socket
            # What the peer sends before our 101 waits in the kernel: whoever serves
            # the connection from the 101 on reads it (see start_keepalive).
            self.transport.pause_reading()

    def start_keepalive(self) -> None:
        """The 101 is written: hand the connection to its Socket, if the app adopted it."""
        socket = self.socket
        self.socket = None
        self.scope["extensions"].pop("aicq.socket", None)
        self.request = self.response = None  # type: ignore[assignment]
        if socket is None or socket.handler is None:  # a plain ASGI WebSocket: uvicorn serves it
            self.transport.resume_reading()
            super().start_keepalive()
            return
        self.handed_over = True
        self.connections.discard(self)
        socket.take_over()
        self.conn.parser.close()  # websockets' parser holds the upgrade request (and itself)
        self.transport.resume_reading()

    async def run_asgi(self) -> None:
        """uvicorn's, except that a connection whose Socket took over stays open when
        the app returns: it is the Socket's now."""
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
        if not self.handed_over and self.close_timer is None:
            self.transport.close()
