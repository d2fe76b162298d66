"""Long-poll (GET /room/{id} and GET /dm with wait=) over real HTTP against real servers."""

from __future__ import annotations

import asyncio
import base64
import os
import time

import httpx

from tests.helpers import RedisProcess, longpoll_waiting, new_agent
from tests.sse_support import ready, sse


async def test_without_wait_the_endpoint_answers_as_before(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    first = (await agent.post(http, room, "first")).json()["id"]
    await agent.post(http, room, "second")
    plain = (await http.get(f"/room/{room}")).json()
    assert (await http.get(f"/room/{room}?after={first}")).json() == plain  # `after` alone: as before
    for odd in ("abc", "-1", "1.5", ""):  # a wait Go would not parse: as before too
        assert (await http.get(f"/room/{room}?after={first}&wait={odd}")).json() == plain, odd
    assert [m["body"] for m in plain["messages"]] == ["second", "first"]


async def test_answers_at_once_when_newer_messages_exist(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = await agent.create_room(http)
    ids = [(await agent.post(http, room["id"], f"m{i}")).json()["id"] for i in range(4)]
    started = time.monotonic()
    answer = (await http.get(f"/room/{room['name']}?after={ids[0]}&wait=30", timeout=5)).json()
    assert time.monotonic() - started < 5
    assert answer["room"] == {"id": room["id"], "name": room["name"]}
    assert [m["id"] for m in answer["messages"]] == ids[1:] and answer["has_more"] is False  # oldest first
    page = (await http.get(f"/room/{room['id']}?after={ids[0]}&wait=30&limit=2", timeout=5)).json()
    assert [m["id"] for m in page["messages"]] == ids[1:3] and page["has_more"] is True
    nxt = (await http.get(f"/room/{room['id']}?after={page['messages'][-1]['id']}&wait=0")).json()
    assert [m["id"] for m in nxt["messages"]] == ids[3:]


async def test_holds_until_a_message_arrives(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    last = (await agent.post(http, room, "seen")).json()["id"]
    poll = asyncio.create_task(http.get(f"/room/{room}?after={last}&wait=20", timeout=30))
    await asyncio.sleep(0.3)
    assert not poll.done()
    posted = (await agent.post(http, room, "news")).json()
    answered_at = time.monotonic()
    answer = (await asyncio.wait_for(poll, 5)).json()
    # Generous: the real figure (a few ms) is measured by bench/sse.py.
    assert time.monotonic() - answered_at < 1.0
    assert [m["id"] for m in answer["messages"]] == [posted["id"]] and answer["has_more"] is False


async def test_without_after_it_waits_for_the_next_message(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    await agent.post(http, room, "old news")
    poll = asyncio.create_task(http.get(f"/room/{room}?wait=20", timeout=30))
    await asyncio.sleep(0.3)
    posted = (await agent.post(http, room, "next")).json()
    answer = (await asyncio.wait_for(poll, 5)).json()
    assert [m["id"] for m in answer["messages"]] == [posted["id"]]


async def test_an_empty_answer_when_the_wait_ends(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    last = (await agent.post(http, room, "seen")).json()["id"]
    started = time.monotonic()
    response = await http.get(f"/room/{room}?after={last}&wait=1")
    assert 0.9 < time.monotonic() - started < 5
    assert response.status_code == 200 and response.json()["messages"] == [] and response.json()["has_more"] is False


async def test_private_rooms_need_their_key(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key = "long-poll-secret-key"
    room = (await agent.create_room(http, key=key))["id"]
    assert (await http.get(f"/room/{room}?wait=0")).status_code == 403
    response = await http.get(f"/room/{room}?wait=0", headers={"X-AICQ-Room-Key": key})
    assert response.status_code == 200 and response.json()["messages"] == []


async def test_dms_long_poll(http: httpx.AsyncClient) -> None:
    me, friend = await new_agent(http), await new_agent(http)
    body = base64.b64encode(os.urandom(80)).decode()
    first = (await friend.request(http, "POST", f"/dm/{me.id}", {"body": body})).json()["id"]
    assert (await http.get("/dm?wait=1")).status_code == 401
    answer = (await me.request(http, "GET", f"/dm?after={first}&wait=0")).json()
    assert answer == {"messages": [], "has_more": False}
    poll = asyncio.create_task(me.request(http, "GET", f"/dm?after={first}&wait=20", timeout=30))
    await asyncio.sleep(0.3)
    sent = (await friend.request(http, "POST", f"/dm/{me.id}", {"body": body})).json()
    answer = (await asyncio.wait_for(poll, 5)).json()
    assert answer["messages"] == [{"id": sent["id"], "from": friend.id, "body": body, "ts": sent["ts"]}]
    everything = (await me.request(http, "GET", "/dm?after=1&wait=0")).json()
    assert [m["id"] for m in everything["messages"]] == [first, sent["id"]]  # oldest first
    assert [m["id"] for m in (await me.request(http, "GET", "/dm")).json()["messages"]] == [sent["id"], first]


async def test_a_client_that_leaves_frees_its_wait(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    before = longpoll_waiting(server.url)
    async with httpx.AsyncClient(base_url=server.url) as impatient:
        poll = asyncio.create_task(impatient.get(f"/room/{room}?wait=30", timeout=30))
        deadline = time.monotonic() + 5
        while longpoll_waiting(server.url) < before + 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert longpoll_waiting(server.url) == before + 1
        poll.cancel()
    deadline = time.monotonic() + 5
    while longpoll_waiting(server.url) > before and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert longpoll_waiting(server.url) == before


async def test_sigterm_answers_waiting_requests_at_once(start_server) -> None:
    doomed = start_server()
    async with httpx.AsyncClient(base_url=doomed.url, timeout=40) as http:
        agent = await new_agent(http)
        room = (await agent.create_room(http))["id"]
        last = (await agent.post(http, room, "seen")).json()["id"]
        poll = asyncio.create_task(http.get(f"/room/{room}?after={last}&wait=30"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        stopped = asyncio.get_running_loop().run_in_executor(None, doomed.stop)
        response = await asyncio.wait_for(poll, 10)
        assert time.monotonic() - started < 5
        assert response.status_code == 200 and response.json()["messages"] == []
        assert await stopped == 0
        assert time.monotonic() - started < 10


async def test_a_message_published_while_the_hub_is_disconnected_is_not_lost(start_server, tmp_path) -> None:
    """The hub's pub/sub connection is cut: it must notice (no silent re-subscribe),
    back-fill its listeners (a stream), and not answer a poll from what it saw
    before (a room it keeps subscribed between polls lingers)."""
    import redis

    private = RedisProcess(tmp_path).start()
    server = start_server(REDIS_URL=private.url)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            agent = await new_agent(http)
            room = (await agent.create_room(http))["id"]
            first = (await agent.post(http, room, "first")).json()["id"]
            assert (await http.get(f"/room/{room}?after={first}&wait=0")).json()["messages"] == []
            seen = (await agent.post(http, room, "seen by the hub")).json()["id"]
            answer = (await http.get(f"/room/{room}?after={first}&wait=5")).json()
            assert [m["id"] for m in answer["messages"]] == [seen]
            async with sse(http, f"/events?rooms={room}") as reader:
                await ready(reader)
                killed = redis.Redis(port=private.port).client_kill_filter(_type="pubsub")
                assert killed >= 1
                missed = (await agent.post(http, room, "while the hub reconnects")).json()["id"]
                assert (await reader.next(timeout=10)).id == missed
            answer = (await http.get(f"/room/{room}?after={seen}&wait=10")).json()
            assert [m["id"] for m in answer["messages"]] == [missed]
        assert "pub/sub connection lost" in server.log_text()
    finally:
        server.stop()
        private.stop()
