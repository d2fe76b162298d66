"""Stream.follow: rooms joined while the stream runs; a stream that starts before its server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aicq.client import AsyncClient, Credentials, DirectMessage, Message, NotFound, Stream
from tests.conftest import ServerFactory
from tests.helpers import free_port

from .helpers import WAIT, new_agent, unique


async def _events(stream: Stream) -> tuple[asyncio.Task[None], asyncio.Queue[Any]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        async for event in stream:
            await queue.put(event)

    return asyncio.create_task(pump()), queue


async def _next(queue: asyncio.Queue[Any], kind: type) -> Any:
    async with asyncio.timeout(WAIT):
        while not isinstance(event := await queue.get(), kind):
            pass
    return event


async def test_follow_adds_rooms_to_a_running_stream(server: Any) -> None:
    poster = await new_agent(server.url)
    listener = AsyncClient(server.url)
    first, second = unique("f1"), unique("f2")
    await poster.create_room(first)
    room2 = await poster.create_room(second)
    early = await poster.post(second, "before the follow")
    stream = listener.stream([first])
    task, queue = await _events(stream)
    try:
        await asyncio.wait_for(stream.wait_ready(), WAIT)
        assert stream.connected
        room = await asyncio.wait_for(stream.follow(second), WAIT)
        assert (room.id, room.name) == (room2.id, second)
        assert await asyncio.wait_for(stream.follow(second), WAIT) == room  # already followed
        posted = await poster.post(second, "after the follow")
        assert (await _next(queue, Message)).id == posted.id != early.id  # no replay without since

        with pytest.raises(NotFound):
            await asyncio.wait_for(stream.follow("no-such-room-" + unique()), WAIT)
        assert stream.connected and not task.done()  # only that follow failed

        # With ``since`` the server replays what came after it.
        third = unique("f3")
        await poster.create_room(third)
        old = [(await poster.post(third, f"old {i}")).id for i in range(2)]
        await asyncio.wait_for(stream.follow(third, since=old[0]), WAIT)
        assert (await _next(queue, Message)).id == old[1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stream.aclose()
        await listener.aclose()
        await poster.aclose()


async def test_a_dm_stream_started_before_its_server_waits_for_it(start_server: ServerFactory) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = AsyncClient(url, Credentials.generate())
    stream: Stream | None = None
    task: asyncio.Task[None] | None = None
    try:
        aicq = start_server(port=port)
        await client.register("early")  # the identity must exist on the server
        await asyncio.to_thread(aicq.stop)
        stream = client.stream(dms=True)
        stream.backoff = 0.05
        task, queue = await _events(stream)
        await asyncio.to_thread(aicq.start)
        await asyncio.wait_for(stream.wait_ready(), WAIT)
        async with AsyncClient(url, Credentials.generate()) as sender:
            await sender.register("sender")
            sent = await sender.send_dm(client.require_credentials().require_id(), "you were early")
        dm = await _next(queue, DirectMessage)
        assert (dm.id, dm.text) == (sent.id, "you were early")
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if stream is not None:
            await stream.aclose()
        await client.aclose()
