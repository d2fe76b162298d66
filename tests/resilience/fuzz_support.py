"""What the fuzz, abuse and privacy tests share: figures, metrics, RSS, a ping probe, raw WS frames.

Every wait here is bounded. Nothing here asserts; the tests judge what it returns.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
import pytest

# Figures


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Any:
    """emit(title, {name: value}): print the figures (pytest -s) and add them to the run's summary."""
    try:
        summary: list[str] | None = request.getfixturevalue("figures_log")
    except pytest.FixtureLookupError:
        summary = None

    def emit(title: str, values: dict[str, Any]) -> None:
        width = max(len(name) for name in values) if values else 0
        block = "\n".join([f"[{title}]", *(f"  {name:<{width}}  {value}" for name, value in values.items())])
        print("\n" + block)
        if summary is not None:
            summary.append(block)

    return emit


def percentile(samples: Sequence[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# Server-side figures


def metric(base_url: str, name: str, labels: str | None = None) -> float:
    """The sum of one Prometheus metric's samples (optionally those whose labels contain ``labels``)."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric_name = key.split("{", 1)[0]
        if metric_name == name and (labels is None or labels in key):
            total += float(value)
    return total


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def alive(server: Any) -> bool:
    return server.process is not None and server.process.poll() is None


# A bystander that measures ping latency


async def ping_once(ws: Any, ref: Any, timeout: float = 5.0) -> float:
    """One ping → pong round trip on an open session, in seconds (skipping other frames)."""
    started = time.perf_counter()
    await ws.send(orjson.dumps({"op": "ping", "ref": ref}).decode())

    async def scan() -> None:
        while True:
            frame = orjson.loads(await ws.recv())
            if frame.get("type") == "pong" and frame.get("ref") == ref:
                return
    await asyncio.wait_for(scan(), timeout)
    return time.perf_counter() - started


class PingProbe:
    """Pings on one session every ``interval`` s until stopped; records every round trip."""

    def __init__(self, ws: Any, interval: float = 0.05):
        self.ws = ws
        self.interval = interval
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            try:
                self.samples.append(await ping_once(self.ws, f"probe-{count}"))
            except Exception as exc:  # recorded, judged by the test
                self.failures.append(f"{type(exc).__name__}: {exc}")
                return
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def start(self) -> PingProbe:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


# Raw WebSocket frames (a client may send what no library would)


def handshake_request(path: str = "/ws", extra_headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawSession:
    """A WebSocket client over a plain asyncio stream: sends any bytes, parses server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None, timeout: float = 5) -> RawSession:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(handshake_request(extra_headers=headers))
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if not response.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(response.decode("latin-1", "replace").splitlines()[0])
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv_frame(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next complete server frame (opcode, payload); raises EOFError when the TCP stream ends."""
        async def read() -> tuple[int, bytes]:
            try:
                head = await self.reader.readexactly(2)
                length = head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                payload = await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise EOFError from exc
            opcode = head[0] & 0x0F
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            return opcode, payload
        return await asyncio.wait_for(read(), timeout)

    async def recv_json(self, timeout: float = 5) -> dict | None:
        """The next text frame as JSON (pings answered, pongs skipped); None once a close frame came."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, payload = await self.recv_frame(max(0.01, deadline - time.monotonic()))
            if opcode == 0x1:
                return orjson.loads(payload)
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                await self.send(client_frame(0xA, payload))

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, ConnectionError, OSError):
            pass
