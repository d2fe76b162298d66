"""A reader that never reads is closed with 1013; its neighbours keep receiving."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

import httpx
import orjson
from websockets.asyncio.client import connect

from tests.helpers import new_agent, recv_json


def _stalled_client(port: int, room: str) -> socket.socket:
    """Handshake, subscribe, then never read again (a tiny receive buffer fills fast)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:  # the 101, then silence from our side
        response += sock.recv(1024)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload = orjson.dumps({"op": "subscribe", "room": room})
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def _slow_disconnects(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aicq_ws_slow_disconnects_total "):
            return float(line.split()[1])
    return 0.0


async def test_stalled_reader_is_closed_and_others_keep_up(start_server) -> None:
    server = start_server(WS_QUEUE_BYTES="65536")
    before = _slow_disconnects(server.url)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        agent = await new_agent(http)
        room = (await agent.create_room(http))["id"]
        stalled = _stalled_client(server.port, room)
        async with connect(server.ws_url) as healthy:
            await recv_json(healthy)
            await healthy.send(orjson.dumps({"op": "subscribe", "room": room, "ref": "s"}).decode())
            await recv_json(healthy)
            sent: dict[str, float] = {}
            latencies: list[float] = []
            expected: list[int] = []
            all_read = asyncio.Event()

            async def read_all() -> None:
                while True:
                    frame = await recv_json(healthy, timeout=10)
                    if frame["type"] == "message":
                        latencies.append(time.monotonic() - sent[frame["msg"]["body"][:8]])
                        if expected and len(latencies) >= expected[0]:
                            all_read.set()

            reader = asyncio.create_task(read_all())
            body = "x" * 4000
            # Post until the stalled session is closed: how much the kernel buffers
            # before the server's own queue fills depends on the machine. Bounded: 40 MB.
            closed = False
            for batch in range(1000):
                tags = [f"{batch:04d}-{i:03d}" for i in range(10)]
                for tag in tags:
                    sent[tag[:8]] = time.monotonic()
                results = await asyncio.gather(*[agent.post(http, room, tag[:8] + body) for tag in tags])
                assert all(r.status_code == 201 for r in results)
                if batch % 10 == 9 and _slow_disconnects(server.url) >= before + 1:
                    closed = True
                    break
            total = len(sent)
            expected.append(total)
            if len(latencies) >= total:
                all_read.set()
            await asyncio.wait_for(all_read.wait(), 20)
            reader.cancel()
    assert closed, "the stalled reader was never closed"
    assert len(latencies) == total, "the healthy reader missed messages"
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99)] < 2.0  # generous: CI machines are small
    stalled.close()
    server.stop()
