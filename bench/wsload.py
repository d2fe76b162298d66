"""A lean WebSocket load client: many connections in one process, minimal work per frame.

Python's full WebSocket clients cost more per frame than the server does; these
subscribers speak just enough of RFC 6455 to subscribe and count frames, and a
few of them decode payloads to measure publish-to-deliver latency.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

import orjson


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = bytes([0x81, 0x80 | length])
    else:
        header = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + mask + body


class Subscriber(asyncio.Protocol):
    """Counts the text frames it receives; decodes them when ``measure`` is set.

    Ready once the session answered its first op: ``subscribe`` to ``room``, or a
    ``ping`` without a room (so an idle session is fully set up, auth included).
    ``headers`` go on the upgrade request (e.g. the signed AICQ headers).
    """

    def __init__(self, room: str | None, measure: bool, latencies: list[float],
                 headers: dict[str, str] | None = None):
        self.room = room
        self.measure = measure
        self.latencies = latencies
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.buffer = bytearray()
        self.upgraded = False
        self.frames = 0
        self.sample: bytes | None = None  # a message event's payload, when measuring
        self.instance: str | None = None  # the server (worker) that holds the session, from its hello
        self.retries = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{self.headers}\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(bytes(self.buffer[:80]).decode()))
                return
            del self.buffer[: end + 4]
            self.upgraded = True
            self._first_op()
        self._frames()

    def _first_op(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            op = {"op": "subscribe", "room": self.room} if self.room else {"op": "ping"}
            self.transport.write(masked_text_frame(orjson.dumps({**op, "ref": "s"})))

    def _frames(self) -> None:
        buffer = self.buffer
        offset = 0
        while len(buffer) - offset >= 2:
            length = buffer[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                length = int.from_bytes(buffer[offset + 2: offset + 4], "big")
                header = 4
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                length = int.from_bytes(buffer[offset + 2: offset + 10], "big")
                header = 10
            end = offset + header + length
            if len(buffer) < end:
                break
            if buffer[offset] & 0x0F == 0x1:
                self.frames += 1
                if self.measure or not self.ready.done():
                    self._inspect(bytes(buffer[offset + header: end]))
            offset = end
        if offset:
            del buffer[:offset]

    def _inspect(self, payload: bytes) -> None:
        frame = orjson.loads(payload)
        if frame.get("type") in ("ok", "pong") and frame.get("ref") == "s" and not self.ready.done():
            self.ready.set_result(None)
        elif frame.get("type") == "hello":
            self.instance = frame.get("instance")
        elif frame.get("type") == "error" and frame.get("ref") == "s" and not self.ready.done():
            # 503: Redis did not answer within the op's budget (a loaded machine, hundreds
            # of sessions subscribing at once); come back, as a client is told to.
            if frame.get("code") == 503 and self.retries < 3:
                self.retries += 1
                asyncio.get_running_loop().call_later(0.2 * self.retries, self._first_op)
            else:
                self.ready.set_exception(RuntimeError(f"first op refused: {frame}"))
        elif frame.get("type") == "message" and self.measure:
            self.sample = payload
            sent = float(frame["msg"]["body"].split(" ", 1)[0])
            self.latencies.append(time.time() - sent)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))


async def open_subscribers(port: int, room: str | None, count: int, measured: int,
                           latencies: list[float], batch: int = 200,
                           headers: Callable[[int], dict[str, str]] | None = None) -> list[Subscriber]:
    """``count`` sessions, ``batch`` at a time; ``headers(i)`` for the i-th upgrade request."""
    loop = asyncio.get_running_loop()
    subscribers: list[Subscriber] = []
    for start in range(0, count, batch):
        made = await asyncio.gather(*[
            loop.create_connection(
                lambda i=i: Subscriber(room, i < measured, latencies, headers(i) if headers else None),
                "127.0.0.1", port)
            for i in range(start, min(count, start + batch))
        ])
        new = [protocol for _, protocol in made]
        await asyncio.wait_for(asyncio.gather(*[s.ready for s in new]), 60)
        subscribers += new
    return subscribers
