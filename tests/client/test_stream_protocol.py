"""The stream against a scripted peer speaking SPEC §6, to drive disconnects on cue.

A real server is used in ``test_live.py``; here a small ``websockets`` server plays
the server's part of the protocol so the test decides exactly when it closes
with 1012 / 1013 / 1008 and what a replay contains.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from aicq.client import AsyncClient, Credentials, Gap, Message, NotFound, StreamClosed
from aicq.client.errors import TransportError
from aicq.client.models import DirectMessage

ROOM = "22222222-2222-4222-8222-222222222222"
AGENT = "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10"
WAIT = 10

Script = Callable[[ServerConnection, int], Awaitable[None]]


def _message(msg_id: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "type": "message",
            "room": ROOM,
            "msg": {"id": msg_id, "from": AGENT, "body": msg_id, "ts": ts},
        }
    )


async def _hello(ws: ServerConnection) -> None:
    await ws.send(
        orjson.dumps(
            {"type": "hello", "version": 1, "session": "s", "agent": None, "heartbeat": 25}
        )
    )


async def _op(ws: ServerConnection) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))


def _ok(ref: str, recovered: bool = True, replayed: int = 0) -> bytes:
    return orjson.dumps(
        {
            "type": "ok",
            "ref": ref,
            "room": {"id": ROOM, "name": "lobby"},
            "replayed": replayed,
            "recovered": recovered,
        }
    )


@asynccontextmanager
async def _peer(script: Script) -> AsyncIterator[str]:
    count = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        count += 1
        await script(ws, count)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"


async def _take(stream: AsyncIterator[Any], n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(WAIT):
        async for event in stream:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_resumes_after_1013_and_1012_without_gaps_or_duplicates() -> None:
    subscribes: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await _hello(ws)
        op = await _op(ws)
        subscribes.append(op)
        if n == 1:
            await ws.send(_message("01A", 1))
            await ws.send(_message("01B", 2))
            await ws.send(_ok(op["ref"], replayed=0))
            await ws.send(_message("01C", 3))
            await ws.close(1013, "too slow")
        elif n == 2:
            await ws.send(_message("01C", 3))  # the replay repeats what we already had
            await ws.send(_message("01D", 4))
            await ws.send(_ok(op["ref"], replayed=2))
            await ws.close(1012, "restart")
        else:
            await ws.send(_ok(op["ref"], recovered=False))
            await ws.send(_message("01E", 5))
            await ws.wait_closed()

    async with _peer(script) as url, AsyncClient(url) as client:
        stream = client.stream(["lobby"])
        events = await _take(stream, 6)
        await stream.aclose()

    ids = [e.id if isinstance(e, Message) else type(e).__name__ for e in events]
    assert ids == ["01A", "01B", "01C", "01D", "Gap", "01E"]
    assert events[4] == Gap(ROOM)
    assert subscribes[0]["room"] == "lobby" and "since" not in subscribes[0]
    assert subscribes[1]["room"] == ROOM and subscribes[1]["since"] == "01C"
    assert subscribes[2]["since"] == "01D"
    assert stream.connections == 3


async def test_abrupt_drop_before_ready_is_retried() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            ws.transport.abort()  # the TCP connection drops before hello
            return
        await _hello(ws)
        op = await _op(ws)
        await ws.send(_ok(op["ref"]))
        await ws.send(_message("01A", 1))
        await ws.wait_closed()

    async with _peer(script) as url, AsyncClient(url) as client:
        stream = client.stream([ROOM])
        [event] = await _take(stream, 1)
        await stream.aclose()
    assert isinstance(event, Message) and event.id == "01A"


async def test_policy_close_is_not_retried() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await _hello(ws)
        await ws.close(1008, "blocked")

    async with _peer(script) as url, AsyncClient(url) as client:
        with pytest.raises(StreamClosed) as caught:
            await _take(client.stream([ROOM]), 1)
    assert caught.value.status == 1008 and caught.value.message == "blocked"


async def test_subscribe_error_is_raised_with_its_code() -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await _hello(ws)
        op = await _op(ws)
        await ws.send(
            orjson.dumps(
                {"type": "error", "ref": op["ref"], "code": 404, "error": "room not found"}
            )
        )
        await ws.wait_closed()

    async with _peer(script) as url, AsyncClient(url) as client:
        with pytest.raises(NotFound, match="room not found"):
            await _take(client.stream(["nope"]), 1)


async def test_dms_authenticate_with_a_signed_frame_and_decrypt() -> None:
    from aicq.client.crypto import encrypt_dm

    creds = Credentials(Credentials.generate().private_key, AGENT)
    wire = encrypt_dm("secret ✓", creds.public_key)
    auth: list[dict[str, Any]] = []

    async def script(ws: ServerConnection, n: int) -> None:
        await _hello(ws)
        op = await _op(ws)
        auth.append(op)
        await ws.send(orjson.dumps({"type": "ok", "ref": op["ref"], "agent": AGENT}))
        dm = {"id": "01Z", "from": AGENT, "body": wire, "ts": 9}
        await ws.send(orjson.dumps({"type": "dm", "msg": dm}))
        await ws.send(orjson.dumps({"type": "dm", "msg": dm}))
        await ws.send(orjson.dumps({"type": "dm", "msg": {**dm, "id": "01Y", "body": "A" * 80}}))
        await ws.wait_closed()

    class NoRest(AsyncClient):
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            assert (method, path) == ("GET", "/dm")
            return {"messages": []}

    async with _peer(script) as url, NoRest(url, creds) as client:
        stream = client.stream(dms=True)
        first, second = await _take(stream, 2)
        await stream.aclose()
    assert auth[0]["op"] == "auth" and auth[0]["agent"] == AGENT
    assert isinstance(first, DirectMessage) and first.text == "secret ✓"
    assert isinstance(second, DirectMessage) and second.text is None and second.error


async def test_gives_up_after_max_attempts() -> None:
    async with AsyncClient("http://127.0.0.1:9") as client:
        stream = client.stream([ROOM], max_attempts=2)
        stream.backoff = 0.01
        with pytest.raises(TransportError):
            await _take(stream, 1)
