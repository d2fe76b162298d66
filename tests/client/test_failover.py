"""A stream given several instances moves to the next one on every reconnection.

Two scripted peers speak SPEC §6: the first closes with 1012 (restart) and the
stream must resume on the second, after the newest id it saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve

from aicq.client import AsyncClient, Credentials, Message, TransportError
from tests.helpers import free_port

ROOM = "33333333-3333-4333-8333-333333333333"
AGENT = "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10"
WAIT = 10

Script = Callable[[ServerConnection], Awaitable[None]]


def _frame(**data: Any) -> str:
    return orjson.dumps(data).decode()


def _message(msg_id: str, ts: int) -> str:
    return _frame(type="message", room=ROOM, msg={"id": msg_id, "from": AGENT, "body": msg_id, "ts": ts})


async def _open(ws: ServerConnection, instance: str) -> dict[str, Any]:
    """Say hello, confirm the subscribe; return the subscribe op."""
    await ws.send(_frame(type="hello", version=1, session="s", agent=None, heartbeat=25,
                         instance=instance))
    op = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert op["op"] == "subscribe"
    return op


def _ok(op: dict[str, Any], replayed: int = 0) -> str:
    return _frame(type="ok", ref=op["ref"], room={"id": ROOM, "name": "lobby"},
                  replayed=replayed, recovered=True)


@asynccontextmanager
async def _peer(script: Script) -> AsyncIterator[str]:
    async with serve(script, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _take(stream: AsyncIterator[Any], n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(WAIT):
        async for event in stream:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_1012_moves_the_stream_to_the_next_instance_and_resumes() -> None:
    seen_by_b: list[dict[str, Any]] = []

    async def instance_a(ws: ServerConnection) -> None:
        op = await _open(ws, "a")
        await ws.send(_ok(op))
        await ws.send(_message("01A", 1))
        await ws.send(_message("01B", 2))
        await ws.close(1012, "restarting")

    async def instance_b(ws: ServerConnection) -> None:
        op = await _open(ws, "b")
        seen_by_b.append(op)
        await ws.send(_message("01B", 2))  # a replay overlapping what A delivered
        await ws.send(_message("01C", 3))
        await ws.send(_ok(op, replayed=2))
        await ws.send(_message("01D", 4))
        await ws.wait_closed()

    async with _peer(instance_a) as a, _peer(instance_b) as b:
        client = AsyncClient(a)
        stream = client.stream([ROOM], urls=[a, b])
        stream.backoff = 0.01
        try:
            assert stream.url == a
            events = await _take(stream, 4)
            assert [e.id for e in events if isinstance(e, Message)] == ["01A", "01B", "01C", "01D"]
            assert stream.url == b and stream.hello and stream.hello["instance"] == "b"
            assert stream.last_close == 1012 and stream.connections == 2
            assert seen_by_b[0]["since"] == "01B"
        finally:
            await stream.aclose()
            await client.aclose()


async def test_an_unreachable_instance_is_skipped_and_rotation_wraps() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    connections = 0

    async def alive(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        op = await _open(ws, "alive")
        await ws.send(_ok(op))
        await ws.send(_message(f"0{connections}", connections))
        await ws.close(1012, "restarting")

    async with _peer(alive) as live:
        client = AsyncClient(dead)
        stream = client.stream([ROOM], urls=[dead, live + "/"], first_attempts=3)
        stream.backoff = 0.01
        try:
            events = await _take(stream, 2)  # dead, live, dead, live
            assert [e.id for e in events] == ["01", "02"]
            assert stream.urls == [dead, live] and connections == 2
        finally:
            await stream.aclose()
            await client.aclose()


async def test_gives_up_naming_every_instance() -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    client = AsyncClient(urls[0])
    stream = client.stream([ROOM], urls=urls, max_attempts=3)
    stream.backoff = 0.01
    try:
        async with asyncio.timeout(WAIT):
            try:
                await stream.__anext__()
            except TransportError as exc:
                assert all(u.replace("http", "ws") + "/ws" in str(exc) for u in urls)
            else:
                raise AssertionError("the stream should have given up")
    finally:
        await stream.aclose()
        await client.aclose()


async def test_dm_catch_up_asks_the_instance_the_stream_is_on() -> None:
    asked: list[str] = []

    async def authenticated(ws: ServerConnection, instance: str) -> None:
        await ws.send(_frame(type="hello", version=1, session="s", agent=AGENT, heartbeat=25,
                             instance=instance))
        op = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert op["op"] == "auth"
        await ws.send(_frame(type="ok", ref=op["ref"], agent=AGENT))

    async def instance_a(ws: ServerConnection) -> None:
        await authenticated(ws, "a")
        await ws.close(1012, "restarting")

    async def instance_b(ws: ServerConnection) -> None:
        await authenticated(ws, "b")
        await ws.send(_frame(type="dm", msg={"id": "01Z", "from": AGENT, "body": "A" * 80, "ts": 9}))
        await ws.wait_closed()

    class RecordingRest(AsyncClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            asked.append(path)
            return {"messages": []}

    async with _peer(instance_a) as a, _peer(instance_b) as b:
        client = RecordingRest(a, Credentials(Credentials.generate().private_key, AGENT))
        stream = client.stream(dms=True, urls=[a, b])
        stream.backoff = 0.01
        try:
            (dm,) = await _take(stream, 1)
            assert dm.id == "01Z" and dm.error  # not ciphertext for us: delivered, flagged
            assert asked == ["/dm", "/dm", f"{b}/dm"]  # baseline and catch-up on A, then B
        finally:
            await stream.aclose()
            await client.aclose()
