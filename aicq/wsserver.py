"""uvicorn's sans-I/O WebSocket protocol, plus one ASGI extension: ``aicq.socket``.

Fan-out wants what ASGI's ``websocket.send`` cannot give:

- write a frame that was serialised once for every subscriber (server frames are
  unmasked, so the same bytes serve every connection);
- see how much is waiting in the socket's write buffer, to bound it per session;
- close a reader that stopped reading, and abort it if the closing handshake
  does not finish, without awaiting a buffer that will never drain.

Everything else (handshake, pings, close codes, shutdown with 1012) is uvicorn's.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

CLOSE_DEADLINE_S = 5.0


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (what a server sends)."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


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

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

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

    def write(self, frame: bytes) -> bool:
        """Queue a serialised frame; False when the connection is no longer open."""
        if not self.open:
            return False
        self._transport.write(frame)
        return True

    def send(self, payload: bytes) -> bool:
        return self.write(text_frame(payload))

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


class AICQWebSocketProtocol(WebSocketsSansIOProtocol):
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
