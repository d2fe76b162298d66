"""client.events(): the library's Server-Sent Events stream against a real server."""

from __future__ import annotations

import asyncio
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aicq.client import AsyncClient, Client, DirectMessage, Gap, Message, NotFound
from aicq.client.sse import EventParser, ServerEvent, room_key_header

from .helpers import (
    WAIT,
    CutProxy,
    cli,
    cli_command,
    cli_env,
    new_agent,
    next_event,
    pumped,
    stop,
    unique,
)

# Pure: parsing and headers


def test_parser_follows_the_event_stream_rules() -> None:
    parser = EventParser("old")
    lines = [": a comment", "retry: 1000", "", "id: 7", "event: message", "data: {", "data: }", "",
             "data: x", "", "id", "data: y", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [ServerEvent("message", "{\n}", "7"), ServerEvent("message", "x", "7"),
                      ServerEvent("message", "y", None)]
    assert EventParser().feed("id: a\0b") is None


def test_room_key_header_forms() -> None:
    assert room_key_header(["ops"], {"ops": "k, with=comma"}) == "k, with=comma"  # one room: as is
    assert room_key_header(["ops", "lab"], {"ops": "k, with=comma", "lab": "plain"}) == \
        "ops=k%2C%20with%3Dcomma, lab=plain"
    assert room_key_header(["ops", "lab"], {}) is None


# Against a server


async def test_events_deliver_posts_deletions_and_names(server: Any) -> None:
    async with await new_agent(server.url) as alice, AsyncClient(server.url) as anon:
        room = await alice.create_room(unique("sse"))
        stream = anon.events([room.name])
        task = await pumped(stream)
        try:
            posted = await alice.post(room.id, "over plain HTTP")
            event = await next_event(task)
            assert isinstance(event, Message)
            assert (event.id, event.body, event.room) == (posted.id, "over plain HTTP", room.id)
            assert stream.room_name(room.id) == room.name
            assert stream.cursor == posted.id
            await alice.delete(room.id, posted.id)
            deleted = await next_event(task)
            assert (deleted.room, deleted.id) == (room.id, posted.id)
        finally:
            await stop(task, stream)


async def test_events_resume_after_a_cut_without_gap_or_duplicate(server: Any) -> None:
    split = urlsplit(server.url)
    proxy = CutProxy(split.hostname or "127.0.0.1", split.port or 80)
    proxy_url = await proxy.start()
    async with await new_agent(server.url) as alice, AsyncClient(proxy_url) as watcher:
        rooms = [await alice.create_room(unique("sse-cut")) for _ in range(2)]
        stream = watcher.events([r.id for r in rooms])
        task = await pumped(stream)
        try:
            first = await alice.post(rooms[0].id, "before the cut")
            assert (await next_event(task)).id == first.id
            proxy.hold()
            proxy.cut()
            missed = [(await alice.post(rooms[i % 2].id, f"while away {i}")).id for i in range(6)]
            proxy.release()
            assert [(await next_event(task)).id for _ in missed] == missed
            after = await alice.post(rooms[1].id, "after the resume")
            assert (await next_event(task)).id == after.id
            assert task.queue.empty()  # type: ignore[attr-defined]
            assert stream.connections >= 2
        finally:
            await stop(task, stream)
            await proxy.close()


async def test_private_rooms_and_dms_over_events(server: Any) -> None:
    async with await new_agent(server.url) as alice, await new_agent(server.url) as bob:
        assert bob.credentials is not None
        key = "a key, with=odd characters"
        private = await alice.create_room(unique("sse-priv"), private=True, key=key)
        public = await alice.create_room(unique("sse-pub"))
        stream = bob.events([private.id, public.name], dms=True, keys={private.id: key})
        task = await pumped(stream)
        try:
            posted = await alice.post(private.id, "for key holders", key=key)
            assert (await next_event(task)).id == posted.id
            sent = await alice.send_dm(bob.credentials.require_id(), "psst ✓")
            dm = await next_event(task)
            assert isinstance(dm, DirectMessage) and (dm.id, dm.text) == (sent.id, "psst ✓")
        finally:
            await stop(task, stream)
        with pytest.raises(NotFound, match="room not found: no-such-room"):
            async for _ in bob.events(["no-such-room"]):
                pass


async def test_dms_sent_while_away_come_back_through_the_cursor(server: Any) -> None:
    split = urlsplit(server.url)
    proxy = CutProxy(split.hostname or "127.0.0.1", split.port or 80)
    proxy_url = await proxy.start()
    async with await new_agent(server.url) as alice, await new_agent(server.url) as bob_direct:
        assert bob_direct.credentials is not None
        bob_id = bob_direct.credentials.require_id()
        bob = AsyncClient(proxy_url, bob_direct.credentials)
        await alice.send_dm(bob_id, "old news")
        stream = bob.events(dms=True)
        task = await pumped(stream)
        try:
            seen = await alice.send_dm(bob_id, "seen")
            assert (await next_event(task)).id == seen.id
            proxy.hold()
            proxy.cut()
            away = [(await alice.send_dm(bob_id, f"while away {i}")).id for i in range(2)]
            proxy.release()
            assert [(await next_event(task)).id for _ in away] == away
            assert task.queue.empty()  # type: ignore[attr-defined]
        finally:
            await stop(task, stream)
            await bob.aclose()
            await proxy.close()


async def test_events_move_to_another_instance_on_sigterm(server: Any, start_server: Any) -> None:
    doomed = await asyncio.to_thread(start_server)
    async with await new_agent(server.url) as alice, AsyncClient(doomed.url) as watcher:
        room = await alice.create_room(unique("sse-move"))
        stream = watcher.events([room.id], urls=[doomed.url, server.url])
        task = await pumped(stream)
        try:
            before = await alice.post(room.id, "before")
            assert (await next_event(task)).id == before.id
            await asyncio.to_thread(doomed.stop)
            missed = [(await alice.post(room.id, f"during {i}")).id for i in range(3)]
            assert [(await next_event(task)).id for _ in missed] == missed
            assert stream.url == server.url and stream.connections == 2
        finally:
            await stop(task, stream)


async def test_an_expired_cursor_yields_a_gap(server: Any) -> None:
    async with await new_agent(server.url) as alice, AsyncClient(server.url) as anon:
        room = await alice.create_room(unique("sse-gap"))
        stream = anon.events([room.id], since="1")
        try:
            async with asyncio.timeout(WAIT):
                async for event in stream:
                    assert isinstance(event, Gap) and event.room == room.id
                    break
        finally:
            await stream.aclose()


async def test_sync_client_events(server: Any) -> None:
    async with await new_agent(server.url) as alice:
        room = await alice.create_room(unique("sse-sync"))
        first = await alice.post(room.id, "one")
        second = await alice.post(room.id, "two")

    def script() -> list[str]:
        with Client(server.url) as client, closing(client.events([room.id], since=first.id)) as events:
            return [next(events).id]

    assert await asyncio.wait_for(asyncio.to_thread(script), WAIT) == [second.id]


async def test_tail_sse(server: Any, tmp_path: Path) -> None:
    poster = tmp_path / "poster"
    assert (await cli(server.url, poster, "register", "poster")).rc == 0
    name = unique("tail-sse")
    assert (await cli(server.url, poster, "create-room", name)).rc == 0
    proc = await asyncio.create_subprocess_exec(
        *cli_command(server.url, tmp_path / "anon", ["tail", name, "--sse", "--json"]),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env())
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert (await asyncio.wait_for(proc.stderr.readline(), WAIT)).startswith(b"tailing ")
        posted = await cli(server.url, poster, "post", name, "over SSE", "--json")
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert b'"over SSE"' in line and posted.json()["id"].encode() in line  # type: ignore[index]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), WAIT)
