"""Mentions over real HTTP and WebSocket: who is mentioned, the feed, the live event,
and private rooms, which never tell a stranger anything."""

from __future__ import annotations

import base64
import secrets

import httpx
import websockets

from tests.helpers import Agent, ServerProcess, new_agent, recv_json, recv_until
from tests.stores import test_stores as fresh_stores

KEY = "a-private-room-key-0123"
CIPHERTEXT = base64.b64encode(bytes(range(64))).decode()  # the server checks only the shape


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def mentions(http: httpx.AsyncClient, agent: Agent, query: str = "") -> dict:
    response = await agent.request(http, "GET", f"/mentions{query}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_name_or_an_id_mentions_the_agent_once(http: httpx.AsyncClient) -> None:
    name = unique("Deep Thought")
    target, other, author = await new_agent(http, name), await new_agent(http), await new_agent(http)
    posted = await author.post(http, "global", f"hey @{name.upper()} and @{target.id}, cc @<{other.id}>")
    assert posted.status_code == 201
    feed = await mentions(http, target)
    assert [m["id"] for m in feed["mentions"]] == [posted.json()["id"]]
    first = feed["mentions"][0]
    assert first["room_id"] == "00000000-0000-0000-0000-000000000001" and first["room_name"] == "global"
    assert first["from"] == author.id and first["ts"] == posted.json()["ts"] and "@" in first["body"]
    assert [m["id"] for m in (await mentions(http, other))["mentions"]] == [posted.json()["id"]]
    assert (await mentions(http, author))["mentions"] == []


async def test_a_shared_name_means_its_oldest_holder(http: httpx.AsyncClient) -> None:
    name = unique("twin")
    elder, younger, author = await new_agent(http, name), await new_agent(http, name.upper()), await new_agent(http)
    await author.post(http, "global", f"@{name} ping")
    assert len((await mentions(http, elder))["mentions"]) == 1
    assert (await mentions(http, younger))["mentions"] == []


async def test_no_mention_without_a_word_boundary_or_of_oneself(http: httpx.AsyncClient) -> None:
    name = unique("bob")
    bob, author = await new_agent(http, name), await new_agent(http, unique("self"))
    await author.post(http, "global", f"write to x@{name} or @{name}x, or mail {name}@example.com")
    assert (await mentions(http, bob))["mentions"] == []
    await bob.post(http, "global", f"I am @{name}")
    assert (await mentions(http, bob))["mentions"] == []


async def test_a_newly_registered_name_is_mentionable_at_once(http: httpx.AsyncClient) -> None:
    name, author = unique("latecomer"), await new_agent(http)
    await author.post(http, "global", f"is @{name} here?")  # nobody yet: remembered as nobody
    late = await new_agent(http, name)
    await author.post(http, "global", f"@{name} welcome")
    assert [m["body"] for m in (await mentions(http, late))["mentions"]] == [f"@{name} welcome"]


async def test_paging_with_after_and_before(http: httpx.AsyncClient) -> None:
    target, author = await new_agent(http), await new_agent(http)
    ids = [(await author.post(http, "global", f"{i} @{target.id}")).json()["id"] for i in range(5)]
    page = await mentions(http, target, "?limit=2")
    assert [m["id"] for m in page["mentions"]] == ids[:-3:-1] and page["has_more"]
    page = await mentions(http, target, f"?after={ids[1]}&limit=2")
    assert [m["id"] for m in page["mentions"]] == [ids[4], ids[3]] and page["has_more"]
    page = await mentions(http, target, f"?after={ids[1]}&before={ids[3]}&limit=2")
    assert [m["id"] for m in page["mentions"]] == [ids[2]] and not page["has_more"]
    ts = page["mentions"][0]["ts"]
    assert ids[2] in [m["id"] for m in (await mentions(http, target, f"?after={ts - 1}"))["mentions"]]
    # Values the Go handlers tolerate are tolerated here too.
    assert len((await mentions(http, target, "?limit=-4&after=junk&before=x"))["mentions"]) == 5


async def test_a_deleted_message_leaves_the_feed(http: httpx.AsyncClient) -> None:
    target, author = await new_agent(http), await new_agent(http)
    posted = (await author.post(http, "global", f"oops @{target.id}")).json()
    assert (await author.request(http, "DELETE", f"/room/global/{posted['id']}")).status_code == 204
    assert (await mentions(http, target))["mentions"] == []


async def test_mentions_need_a_signature(http: httpx.AsyncClient) -> None:
    response = await http.get("/mentions")
    assert response.status_code == 401 and response.json()["error"]


async def test_the_mentioned_agent_sessions_get_a_live_mention_event(http: httpx.AsyncClient, server) -> None:
    target, author = await new_agent(http), await new_agent(http)
    async with websockets.connect(server.ws_url) as ws:
        await recv_json(ws)  # hello
        await ws.send(_json(target.auth_frame("a")))
        await recv_until(ws, lambda f: f.get("ref") == "a")
        posted = (await author.post(http, "global", f"wake up @{target.id}")).json()
        event = await recv_until(ws, lambda f: f.get("type") == "mention")
    assert event["room"] == "00000000-0000-0000-0000-000000000001"
    assert event["msg"] == {"id": posted["id"], "from": author.id, "body": f"wake up @{target.id}",
                            "ts": posted["ts"]}


async def test_a_private_room_mentions_only_agents_that_used_its_key(http: httpx.AsyncClient, server) -> None:
    owner, reader, stranger = await new_agent(http), await new_agent(http), await new_agent(http)
    room = (await owner.create_room(http, key=KEY))["id"]
    headers = {"X-AICQ-Room-Key": KEY}
    assert (await reader.request(http, "GET", f"/room/{room}", headers=headers)).status_code == 200
    async with websockets.connect(server.ws_url) as ws:
        await recv_json(ws)
        await ws.send(_json(stranger.auth_frame("a")))
        await recv_until(ws, lambda f: f.get("ref") == "a")
        secret = f"the plan, @{reader.id} @{stranger.id} @{owner.id}"
        posted = await owner.request(http, "POST", f"/room/{room}", {"body": secret}, headers=headers)
        assert posted.status_code == 201
        # A DM to the stranger travels its channel after anything the post published there.
        dm = await owner.request(http, "POST", f"/dm/{stranger.id}", {"body": CIPHERTEXT})
        assert dm.status_code == 201
        frame = await recv_until(ws, lambda f: f.get("type") in ("mention", "dm"))
        assert frame["type"] == "dm", frame
    assert [m["body"] for m in (await mentions(http, reader))["mentions"]] == [secret]
    assert (await mentions(http, stranger))["mentions"] == []
    assert (await mentions(http, owner))["mentions"] == []  # its own message

    # Subscribing with the key makes an agent a reader too.
    second = await new_agent(http)
    async with websockets.connect(server.ws_url) as ws:
        await recv_json(ws)
        await ws.send(_json(second.auth_frame("a")))
        await recv_until(ws, lambda f: f.get("ref") == "a")
        await ws.send(_json({"op": "subscribe", "room": room, "key": KEY, "ref": "s"}))
        assert (await recv_until(ws, lambda f: f.get("ref") == "s"))["type"] == "ok"
        await reader.request(http, "POST", f"/room/{room}", {"body": f"@{second.id} welcome"}, headers=headers)
        assert (await recv_until(ws, lambda f: f.get("type") == "mention"))["room"] == room


def _json(data: dict) -> str:
    import orjson

    return orjson.dumps(data).decode()


async def test_names_cost_one_query_per_message_then_none(tmp_path) -> None:
    """Resolving a message's @names is one PostgreSQL query for the ones not seen yet,
    and none once they are cached, hits and misses alike."""
    with fresh_stores() as (database_url, redis_url):
        server = ServerProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                "RATE_LIMIT_WHITELIST": "127.0.0.1"}, tmp_path / "server.log").start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                author, named = await new_agent(http), await new_agent(http, unique("known"))
                body = " ".join(f"@nobody{i}" for i in range(8)) + f" @{(await _name(http, named))}"
                await author.post(http, "global", "warm up: the room and the author are cached now")

                async def queries_for_a_post() -> int:
                    before = _postgres_queries(await http.get("/metrics"))
                    assert (await author.post(http, "global", body)).status_code == 201
                    return _postgres_queries(await http.get("/metrics")) - before

                # Besides the names, the once-a-second move of message counts to
                # PostgreSQL may land inside a measurement: it adds at most one.
                assert 1 <= await queries_for_a_post() <= 2
                assert min([await queries_for_a_post() for _ in range(3)]) == 0
            assert len((await _feed(server, named))["mentions"]) == 4
        finally:
            server.stop()


async def _name(http: httpx.AsyncClient, agent: Agent) -> str:
    return (await http.get(f"/who/{agent.id}")).json()["name"]


async def _feed(server: ServerProcess, agent: Agent) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        return await mentions(http, agent)


def _postgres_queries(response: httpx.Response) -> int:
    line = next(line for line in response.text.splitlines()
                if line.startswith("aicq_postgres_latency_seconds_count"))
    return int(float(line.split()[1]))
