"""wait_for_messages: woken by the stream, gapless across restarts, DMs sealed end to end."""

from __future__ import annotations

import asyncio
import base64
import time

from aicq.client import AsyncClient, Profile, decrypt_dm
from tests.client.helpers import new_agent, unique
from tests.conftest import ServerFactory
from tests.helpers import ServerProcess
from tests.mcp.helpers import WAIT, Agent, stdio_agent


async def _collect(agent: Agent, cursor: str, count: int, **args: object) -> tuple[list[str], str]:
    """Message ids from successive waits until ``count`` came; the last cursor."""
    ids: list[str] = []
    async with asyncio.timeout(WAIT * 2):
        while len(ids) < count:
            _, data = await agent.call("wait_for_messages", {"since": cursor, "timeout_s": 15, **args})
            ids += [m["id"] for m in data["messages"]] + [d["id"] for d in data["dms"]]
            cursor = data["cursor"]
    return ids, cursor


async def test_a_post_wakes_the_waiting_agent_within_a_second(server: ServerProcess) -> None:
    room = unique("live")
    async with stdio_agent(server.url) as a, stdio_agent(server.url) as b:
        await b.call("create_room", {"name": room})
        _, first = await a.call("wait_for_messages", {"rooms": [room], "timeout_s": 0})
        assert first["timed_out"] is True
        waiting = asyncio.create_task(
            a.call("wait_for_messages", {"since": first["cursor"], "timeout_s": 30})
        )
        _, posted = await b.call("post", {"room": room, "body": "anyone here?"})
        posted_at = time.monotonic()
        text, got = await waiting
        assert time.monotonic() - posted_at < 1.0
        assert got["timed_out"] is False and [m["id"] for m in got["messages"]] == [posted["id"]]
        assert text.splitlines()[0].startswith(f"#{room} {posted['id']} ")
        assert text.splitlines()[0].endswith(": anyone here?")

        # Its own messages never wake an agent, but the cursor moves past them.
        _, mine = await a.call("post", {"room": room, "body": "me, talking to myself"})
        _, quiet = await a.call("wait_for_messages", {"since": got["cursor"], "timeout_s": 0.2})
        assert quiet["timed_out"] is True and quiet["messages"] == []
        assert mine["id"] in quiet["cursor"]


async def test_messages_that_came_while_the_agent_thought_are_waiting_for_it(server: ServerProcess) -> None:
    poster = await new_agent(server.url)
    room = unique("busy")
    try:
        async with stdio_agent(server.url) as agent:
            await agent.call("create_room", {"name": room})
            _, first = await agent.call("wait_for_messages", {"timeout_s": 0})
            posted = [(await poster.post(room, f"m{i}")).id for i in range(5)]
            # No cursor: the agent continues after what it was shown; a small limit pages.
            text, part = await agent.call("wait_for_messages", {"limit": 3})
            assert [m["id"] for m in part["messages"]] == posted[:3] and part["more"] is True
            assert "(more are waiting: call again with this cursor)" in text
            ids, _ = await _collect(agent, part["cursor"], 2)
            assert ids == posted[3:]
            # An old cursor replays from where it was, even though the agent saw more since.
            ids, _ = await _collect(agent, first["cursor"], 5)
            assert ids == posted
    finally:
        await poster.aclose()


async def test_dms_round_trip_encrypted_and_the_server_holds_only_ciphertext(server: ServerProcess) -> None:
    secret = f"the eagle lands at {unique()}"
    async with stdio_agent(server.url) as a, stdio_agent(server.url) as b:
        _, b_info = await b.call("who")
        _, first = await b.call("wait_for_messages", {"timeout_s": 0})
        waiting = asyncio.create_task(
            b.call("wait_for_messages", {"since": first["cursor"], "timeout_s": 30})
        )
        _, sent = await a.call("send_dm", {"to": b_info["id"], "body": secret})
        text, got = await waiting
        assert [(d["id"], d["text"]) for d in got["dms"]] == [(sent["id"], secret)]
        assert text.splitlines()[0].startswith(f"DM {sent['id']} ") and text.splitlines()[0].endswith(secret)

        b_creds = Profile(b.profile).load()
        async with AsyncClient(server.url, b_creds) as raw:
            stored = await raw.request("GET", "/dm", signed=True)
        [wire] = [m["body"] for m in stored["messages"] if m["id"] == sent["id"]]
        assert secret not in wire and len(base64.b64decode(wire)) >= 60 + len(secret)
        assert decrypt_dm(wire, b_creds.private_key) == secret
        assert secret not in a.stderr and secret not in b.stderr


async def test_a_server_restart_between_two_waits_loses_and_repeats_nothing(
    start_server: ServerFactory,
) -> None:
    aicq = start_server()
    room = unique("restart")
    poster = await new_agent(aicq.url)
    await poster.create_room(room)
    try:
        async with stdio_agent(aicq.url) as agent:
            _, first = await agent.call("wait_for_messages", {"rooms": [room], "timeout_s": 0})
            before = await poster.post(room, "just before the restart")
            await asyncio.to_thread(aicq.stop)  # SIGTERM: sessions are closed with 1012
            await asyncio.to_thread(aicq.start)
            async with AsyncClient(aicq.url, poster.credentials) as again:
                after = [(await again.post(room, f"after the restart {i}")).id for i in range(3)]
            ids, cursor = await _collect(agent, first["cursor"], 4)
            assert ids == [before.id, *after]
            _, last = await agent.call("wait_for_messages", {"since": cursor, "timeout_s": 0.5})
            assert last["messages"] == [] and last["timed_out"] is True
            assert "Traceback" not in agent.stderr
    finally:
        await poster.aclose()


async def test_a_cursor_outlives_the_mcp_process(server: ServerProcess) -> None:
    poster = await new_agent(server.url)
    room = unique("later")
    try:
        await poster.create_room(room)
        async with stdio_agent(server.url) as agent:
            _, first = await agent.call("wait_for_messages", {"rooms": [room], "timeout_s": 0})
            profile = agent.profile
        posted = [(await poster.post(room, f"while away {i}")).id for i in range(2)]
        dm = await poster.send_dm(Profile(profile).load().require_id(), "while away, privately")
        async with stdio_agent(server.url, profile, None) as agent:
            # No rooms named: the cursor's rooms are followed again from where it left off.
            ids, _ = await _collect(agent, first["cursor"], 3)
            assert ids == [*posted, dm.id]
    finally:
        await poster.aclose()
