"""Presence and agent status on one instance, over real HTTP and WebSocket.

The server runs with a short grace period (a leave is published 1 s after the last
session goes) and a short lease, so leaves and expiries are quick to observe.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.helpers import ServerProcess, new_agent
from tests.presence_support import event, follower, listed

GRACE_S = 1.0


@pytest.fixture(scope="module")
def presence_server(start_module_server) -> ServerProcess:
    return start_module_server(PRESENCE_TTL="3", PRESENCE_GRACE=str(int(GRACE_S)))


@pytest.fixture
async def phttp(presence_server: ServerProcess):
    async with httpx.AsyncClient(base_url=presence_server.url, timeout=10) as client:
        yield client


async def _roster(http: httpx.AsyncClient, room: str, **headers: str) -> dict:
    response = await http.get(f"/room/{room}/presence", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_roster_names_agents_and_counts_anonymous_readers(presence_server, phttp) -> None:
    alice = await new_agent(phttp, "alice-presence")
    room = (await alice.create_room(phttp))["id"]
    assert await _roster(phttp, room) == {"agents": [], "readers": 0}
    async with follower(presence_server.ws_url, alice) as a, follower(presence_server.ws_url) as anon:
        ok = await a.subscribe(room, presence=True)
        # Her own arrival is in the roster her subscribe answers with.
        assert [e["id"] for e in ok["presence"]["agents"]] == [alice.id]
        await anon.subscribe(room)
        roster = await _roster(phttp, room)
        entry = listed(roster)[alice.id]
        assert entry == {"id": alice.id, "name": "alice-presence", "since": entry["since"], "status": "online"}
        assert abs(entry["since"] - ok["presence"]["agents"][0]["since"]) == 0
        assert roster["readers"] == 1
        # By name too, like GET /room/{name}; the read budget's headers say it was counted.
        name = (await phttp.get(f"/room/{room}")).json()["room"]["name"]
        by_name = await phttp.get(f"/room/{name}/presence")
        assert by_name.json() == roster and "X-RateLimit-Remaining" in by_name.headers
    assert (await phttp.get("/room/no-such-room-here/presence")).status_code == 404
    wrong = await phttp.delete(f"/room/{room}/presence")
    assert wrong.status_code == 405 and "GET" in wrong.headers["allow"]


async def test_join_status_and_leave_events_follow_the_ok(presence_server, phttp) -> None:
    watcher, bob = await new_agent(phttp, "watcher"), await new_agent(phttp, "bob-presence")
    room = (await watcher.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, watcher) as w:
        ok = await w.subscribe(room, presence=True)
        assert listed(ok["presence"]).keys() == {watcher.id}
        async with follower(presence_server.ws_url, bob) as b:
            await b.subscribe(room)
            joined = await w.wait_for(event("join", room, bob.id))
            assert joined["agent"]["name"] == "bob-presence" and joined["agent"]["status"] == "online"
            assert isinstance(joined["agent"]["since"], int)

            answer = await b.request("status", status="busy", text="reading the logs")
            assert answer == {"type": "ok", "ref": answer["ref"], "status": "busy", "text": "reading the logs"}
            changed = await w.wait_for(event("status", room, bob.id))
            assert changed["agent"] == {"id": bob.id, "status": "busy", "text": "reading the logs"}
            assert listed(await _roster(phttp, room))[bob.id]["status"] == "busy"

            response = await bob.request(phttp, "PUT", "/status", {"status": "thinking"})
            assert response.status_code == 200 and response.json() == {"status": "thinking"}
            changed = await w.wait_for(lambda f: event("status", room, bob.id)(f) and f["agent"]["status"] == "thinking")
            assert "text" not in changed["agent"]
        left = await w.wait_for(event("leave", room, bob.id))
        assert left == {"type": "leave", "room": room, "agent": {"id": bob.id}}
        assert bob.id not in listed(await _roster(phttp, room))


async def test_sessions_without_presence_get_no_presence_events(presence_server, phttp) -> None:
    poster, bob = await new_agent(phttp), await new_agent(phttp)
    room = (await poster.create_room(phttp))["id"]
    async with follower(presence_server.ws_url) as plain, follower(presence_server.ws_url, poster) as w:
        await plain.subscribe(room)
        await w.subscribe(room, presence=True)
        async with follower(presence_server.ws_url, bob) as b:
            await b.subscribe(room)
            await w.wait_for(event("join", room, bob.id))
        await w.wait_for(event("leave", room, bob.id))
        posted = (await poster.post(phttp, room, "after the leave")).json()
        await plain.wait_for(lambda f: f.get("type") == "message" and f["msg"]["id"] == posted["id"])
        assert [f["type"] for f in plain.frames] == ["message"]


async def test_several_sessions_of_one_agent_are_one_presence(presence_server, phttp) -> None:
    watcher, bob = await new_agent(phttp), await new_agent(phttp)
    room = (await watcher.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, watcher) as w:
        await w.subscribe(room, presence=True)
        async with follower(presence_server.ws_url, bob) as first:
            await first.subscribe(room)
            await w.wait_for(event("join", room, bob.id))
            async with follower(presence_server.ws_url, bob) as second:
                await second.subscribe(room)
                assert [e["id"] for e in (await _roster(phttp, room))["agents"]].count(bob.id) == 1
            # The second session left; the first is still here. A marker status proves the
            # watcher would have seen a leave by now.
            await first.request("status", status="away")
            await w.wait_for(event("status", room, bob.id))
            assert w.presence_events(room, but=watcher.id) == [("join", bob.id), ("status", bob.id)]
        await w.wait_for(event("leave", room, bob.id))


async def test_flapping_reconnect_is_neither_a_leave_nor_a_join(presence_server, phttp) -> None:
    """Bob drops and comes back within the grace period; Carol leaves for good after him.

    Due leaves are published in the order they fell due, so Carol's leave arriving
    while Bob's never did shows Bob's was cancelled, not late.
    """
    watcher, bob, carol = await new_agent(phttp), await new_agent(phttp), await new_agent(phttp)
    room = (await watcher.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, watcher) as w:
        await w.subscribe(room, presence=True)
        async with follower(presence_server.ws_url, carol) as c:
            await c.subscribe(room)
            await w.wait_for(event("join", room, carol.id))
            async with follower(presence_server.ws_url, bob) as b:
                await b.subscribe(room)
                await w.wait_for(event("join", room, bob.id))
            async with follower(presence_server.ws_url, bob) as b:  # back at once
                await b.subscribe(room)
                await c.ws.close()  # Carol goes after Bob came back
                await w.wait_for(event("leave", room, carol.id), timeout=GRACE_S + 5)
                assert w.presence_events(room, but=watcher.id) == [
                    ("join", carol.id), ("join", bob.id), ("leave", carol.id)]
                assert bob.id in listed(await _roster(phttp, room))


async def test_status_validation_and_its_errors(presence_server, phttp) -> None:
    agent = await new_agent(phttp)
    offline = await agent.request(phttp, "PUT", "/status", {"status": "busy"})
    assert offline.status_code == 409 and "no live session" in offline.json()["error"]
    assert (await phttp.put("/status", json={"status": "busy"})).status_code == 401
    async with follower(presence_server.ws_url, agent) as session:
        cases = [
            ({"status": "sleeping"}, 400, "status must be one of online, busy, thinking, away"),
            ({"text": "no status"}, 400, "status must be one of"),
            ({"status": "busy", "text": "x" * 65}, 422, "text exceeds 64 characters"),
            ({"status": "busy", "text": 5}, 400, "text is required and must be a non-empty string"),
            ({"status": "busy", "ttl": 0}, 400, "ttl must be an integer number of seconds"),
            ({"status": "busy", "ttl": 86401}, 400, "ttl must be"),
            ({"status": "busy", "ttl": True}, 400, "ttl must be"),
            ({"status": "busy", "ttl": "60"}, 400, "ttl must be"),
        ]
        for data, code, message in cases:
            response = await agent.request(phttp, "PUT", "/status", data)
            assert response.status_code == code and message in response.json()["error"], (data, response.text)
            answer = await session.request("status", **data)
            assert answer["type"] == "error" and answer["code"] == code and message in answer["error"], answer
        assert (await agent.request(phttp, "PUT", "/status", {"status": "away", "text": "é" * 64})).status_code == 200
        cleared = await agent.request(phttp, "PUT", "/status", {"status": "online", "text": ""})
        assert cleared.json() == {"status": "online"}
    async with follower(presence_server.ws_url) as anonymous:
        answer = await anonymous.request("status", status="busy")
        assert answer["type"] == "error" and answer["code"] == 401


async def test_a_status_ends_with_its_ttl_or_with_the_last_session(presence_server, phttp) -> None:
    watcher, bob = await new_agent(phttp), await new_agent(phttp)
    room = (await watcher.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, watcher) as w:
        await w.subscribe(room, presence=True)
        async with follower(presence_server.ws_url, bob) as b:
            await b.subscribe(room)
            answer = await b.request("status", status="busy", text="one second", ttl=1)
            assert answer["ttl"] == 1
            await w.wait_for(lambda f: event("status", room, bob.id)(f) and f["agent"]["status"] == "busy")
            back = await w.wait_for(lambda f: event("status", room, bob.id)(f) and f["agent"]["status"] == "online",
                                    timeout=5)
            assert back["agent"] == {"id": bob.id, "status": "online"}
            assert listed(await _roster(phttp, room))[bob.id]["status"] == "online"
            await b.request("status", status="thinking", text="kept while connected")
        await w.wait_for(event("leave", room, bob.id))
        async with follower(presence_server.ws_url, bob) as b:  # a new session: the status is gone
            await b.subscribe(room)
            rejoined = await w.wait_for(
                lambda f: event("join", room, bob.id)(f) and len(w.presence_events(room, but=watcher.id)) > 4)
            assert rejoined["agent"]["status"] == "online" and "text" not in rejoined["agent"]


async def test_anonymous_session_that_authenticates_is_named_from_then_on(presence_server, phttp) -> None:
    watcher, bob = await new_agent(phttp), await new_agent(phttp, f"late-{secrets.token_hex(3)}")
    room = (await watcher.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, watcher) as w, follower(presence_server.ws_url) as b:
        await w.subscribe(room, presence=True)
        await b.subscribe(room)
        assert (await _roster(phttp, room))["readers"] == 1
        credentials = {k: v for k, v in bob.auth_frame().items() if k not in ("op", "ref")}
        assert (await b.request("auth", **credentials))["type"] == "ok"
        await w.wait_for(event("join", room, bob.id))
        roster = await _roster(phttp, room)
        assert roster["readers"] == 0 and bob.id in listed(roster)


async def test_channels_say_how_many_are_present(presence_server, phttp) -> None:
    agent = await new_agent(phttp)
    room = (await agent.create_room(phttp))["id"]
    async with follower(presence_server.ws_url, agent) as a, follower(presence_server.ws_url) as anon:
        await a.subscribe(room, presence=True)
        await anon.subscribe(room)
        channels = (await phttp.get("/channels", params={"limit": 100})).json()["channels"]
        entry = next(c for c in channels if c["id"] == room)
        assert (entry["present"], entry["readers"]) == (1, 1)


async def test_status_budget_is_shared_by_rest_and_ws(limited_server) -> None:
    ip = {"X-Test-Client-IP": f"10.77.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"}
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10, headers=ip) as http:
        agent = await new_agent(http)
        async with follower(limited_server.ws_url, agent, **ip) as session:
            for _ in range(15):
                response = await agent.request(http, "PUT", "/status", {"status": "busy"}, headers=ip)
                assert response.status_code == 200, response.text
            assert response.headers["X-RateLimit-Limit"] == "30"
            answers = [await session.request("status", status="away") for _ in range(16)]
            assert [a["type"] for a in answers[:15]] == ["ok"] * 15
            assert answers[15]["type"] == "error" and answers[15]["code"] == 429
