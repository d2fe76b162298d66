"""The library against a real server: REST calls, streaming, resume, DMs."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlsplit

import pytest

from aicq.client import (
    AsyncClient,
    Client,
    Credentials,
    DirectMessage,
    Forbidden,
    Message,
    NotFound,
    Stream,
)
from aicq.client.errors import BadRequest

from . import dm_reference
from .helpers import WAIT, CutProxy, new_agent, next_event, pumped, stop, unique


async def _next_message(stream: Stream) -> Message:
    async with asyncio.timeout(WAIT):
        async for event in stream:
            if isinstance(event, Message):
                return event
    raise AssertionError("stream ended")





async def test_rest_round_trip(server: Any) -> None:
    async with await new_agent(server.url, "live-rest") as alice:
        assert alice.credentials is not None and alice.credentials.agent_id
        me = await alice.who(alice.credentials.agent_id)
        assert me.name == "live-rest" and me.public_key == alice.credentials.public_key
        again = await alice.register("live-rest")
        assert again.agent_id == me.id

        room = await alice.create_room(unique("room"))
        token = unique("tok")
        first = await alice.post(room.name, f"hello {token}")
        reply = await alice.post(room.id, "a reply", reply_to=first.id)
        page = await alice.read(room.id)
        assert [m.id for m in page.messages] == [reply.id, first.id]
        assert page.messages[0].pid == first.id and page.messages[1].body == f"hello {token}"
        older = await alice.read(room.id, before=reply.id)
        assert [m.id for m in older.messages] == [first.id]

        hits = await alice.find(token)
        assert [h.id for h in hits] == [first.id] and hits[0].room_id == room.id
        assert room.id in {c.id for c in await alice.channels(limit=100)}

        await alice.delete(room.id, first.id)
        assert [m.id for m in (await alice.read(room.id)).messages] == [reply.id]
        with pytest.raises(NotFound):
            await alice.delete(room.id, first.id)


async def test_typed_errors_carry_the_server_message(server: Any) -> None:
    async with await new_agent(server.url) as alice:
        with pytest.raises(NotFound) as caught:
            await alice.post(unique("missing"), "x")
        assert caught.value.status == 404 and caught.value.message == "room not found"
        with pytest.raises(BadRequest):
            await alice.create_room("not a valid name!")
        room = await alice.create_room(unique("priv"), private=True, key="k" * 20)
        with pytest.raises(Forbidden):
            await alice.read(room.id)
        await alice.post(room.id, "secret", key="k" * 20)
        assert [m.body for m in (await alice.read(room.id, key="k" * 20)).messages] == ["secret"]


async def test_stream_delivers_posts_and_deletions(server: Any) -> None:
    async with await new_agent(server.url) as alice, AsyncClient(server.url) as anon:
        room = await alice.create_room(unique("live"))
        stream = anon.stream([room.name])
        task = await pumped(stream)
        try:
            posted = await alice.post(room.id, "live one")
            event = await next_event(task)
            assert isinstance(event, Message)
            assert (event.id, event.body, event.room) == (posted.id, "live one", room.id)
            assert stream.room_name(room.id) == room.name
            await alice.delete(room.id, posted.id)
            deleted = await next_event(task)
            assert (deleted.room, deleted.id) == (room.id, posted.id)
        finally:
            await stop(task, stream)


async def test_stream_resumes_after_a_cut_without_gap_or_duplicate(server: Any) -> None:
    split = urlsplit(server.url)
    proxy = CutProxy(split.hostname or "127.0.0.1", split.port or 80)
    proxy_url = await proxy.start()
    async with await new_agent(server.url) as alice, AsyncClient(proxy_url) as watcher:
        room = await alice.create_room(unique("resume"))
        stream = watcher.stream([room.id])
        task = await pumped(stream)
        try:
            first = await alice.post(room.id, "before the cut")
            assert (await next_event(task)).id == first.id

            proxy.hold()
            proxy.cut()
            missed = [(await alice.post(room.id, f"while away {i}")).id for i in range(5)]
            proxy.release()

            got = [(await next_event(task)).id for _ in missed]
            assert got == missed
            after = await alice.post(room.id, "after the resume")
            assert (await next_event(task)).id == after.id
            assert task.queue.empty()  # type: ignore[attr-defined]
            assert stream.connections >= 2
        finally:
            await stop(task, stream)
            await proxy.close()


async def test_dm_end_to_end(server: Any) -> None:
    async with await new_agent(server.url) as alice, await new_agent(server.url) as bob:
        assert bob.credentials is not None and alice.credentials is not None
        bob_id = bob.credentials.require_id()
        stream = bob.stream(dms=True)
        task = await pumped(stream)
        try:
            sent = await alice.send_dm(bob_id, "psst ✓")
            live = await next_event(task)
            assert isinstance(live, DirectMessage)
            assert (live.id, live.text, live.sender) == (
                sent.id,
                "psst ✓",
                alice.credentials.agent_id,
            )
        finally:
            await stop(task, stream)

        [dm] = await bob.inbox()
        assert dm.text == "psst ✓" and dm.error is None
        seed = bob.credentials.private_key.private_bytes_raw()
        assert dm_reference.open_(dm.body, seed) == "psst ✓"
        # Something that is not for bob's key shows up marked, not as a failure.
        stranger = Credentials.generate().private_key.public_key().public_bytes_raw()
        wire = dm_reference.seal("not for bob", stranger)
        await alice.request("POST", f"/dm/{bob_id}", json={"body": wire}, signed=True)
        newest, oldest = await bob.inbox()
        assert newest.text is None and newest.error and oldest.text == "psst ✓"
        assert base64.b64decode(newest.body) == base64.b64decode(wire)


async def test_stream_catches_up_on_dms_sent_while_disconnected(server: Any) -> None:
    split = urlsplit(server.url)
    proxy = CutProxy(split.hostname or "127.0.0.1", split.port or 80)
    proxy_url = await proxy.start()
    async with await new_agent(server.url) as alice, await new_agent(server.url) as bob_direct:
        assert bob_direct.credentials is not None
        bob = AsyncClient(proxy_url, bob_direct.credentials)
        await alice.send_dm(bob_direct.credentials.require_id(), "old news")
        stream = bob.stream(dms=True)
        task = await pumped(stream)
        try:
            proxy.hold()
            proxy.cut()
            sent = await alice.send_dm(bob_direct.credentials.require_id(), "while away")
            proxy.release()
            event = await next_event(task)
            assert (event.id, event.text) == (sent.id, "while away")
            assert task.queue.empty()  # type: ignore[attr-defined]
        finally:
            await stop(task, stream)
            await bob.aclose()
            await proxy.close()


async def test_sync_client(server: Any) -> None:
    room_name = unique("sync")

    def script() -> list[str]:
        with Client(server.url) as client:
            creds = client.register("sync-agent")
            assert creds.agent_id
            room = client.create_room(room_name)
            client.post(room.id, "one")
            client.post(room.id, "two")
            return [m.body for m in client.read(room.id).messages]

    assert await asyncio.to_thread(script) == ["two", "one"]


async def test_stream_resumes_across_a_server_restart(server: Any, start_server: Any) -> None:
    """SIGTERM closes sessions with 1012; the stream comes back to the new process."""
    first = await asyncio.to_thread(start_server)
    async with await new_agent(server.url) as alice, AsyncClient(first.url) as watcher:
        room = await alice.create_room(unique("restart"))
        stream = watcher.stream([room.id])
        task = await pumped(stream)
        try:
            before = await alice.post(room.id, "before the restart")
            assert (await next_event(task)).id == before.id

            await asyncio.to_thread(first.stop)
            missed = [(await alice.post(room.id, f"during {i}")).id for i in range(3)]
            await asyncio.to_thread(start_server, port=first.port)

            assert [(await next_event(task)).id for _ in missed] == missed
            after = await alice.post(room.id, "after the restart")
            assert (await next_event(task)).id == after.id
            assert task.queue.empty()  # type: ignore[attr-defined]
            assert stream.connections >= 2
            assert stream.last_close == 1012
        finally:
            await stop(task, stream)
