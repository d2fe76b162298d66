"""Rate limits, byte budget and IP blocks (SPEC §5) on a server that enforces them.

Each test picks its own client IP through the trusted header the fixture configures,
so tests never share a budget.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from tests.helpers import Agent, random_ip, recv_json, recv_until


@pytest.fixture
async def limited(limited_server):
    ip = random_ip()
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10,
                                 headers={"X-Test-Client-IP": ip}) as client:
        client.ip = ip  # type: ignore[attr-defined]
        yield client


async def _agent(client: httpx.AsyncClient) -> Agent:
    return await Agent().register(client)


async def test_headers_and_429_with_retry_after(limited: httpx.AsyncClient) -> None:
    first = await limited.get("/channels")
    assert first.headers["x-ratelimit-limit"] == "60"
    assert first.headers["x-ratelimit-remaining"] == "59"
    assert int(first.headers["x-ratelimit-reset"]) >= int(time.time())
    responses = await asyncio.gather(*[limited.get("/channels") for _ in range(60)])
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 59 and statuses.count(429) == 1
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json() == {"error": "rate limit exceeded"}
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"


async def test_limits_table(limited: httpx.AsyncClient) -> None:
    agent = await _agent(limited)
    expected = {
        ("GET", "/who/" + agent.id): 100, ("GET", "/find?q=hello"): 30,
        ("GET", "/room/global"): 120, ("GET", "/channels"): 60,
    }
    for (method, path), limit in expected.items():
        response = await limited.request(method, path)
        assert response.headers["x-ratelimit-limit"] == str(limit), path
    signed = await agent.request(limited, "GET", "/dm")
    assert signed.headers["x-ratelimit-limit"] == "60"
    posted = await agent.post(limited, "global", "limits")
    assert posted.headers["x-ratelimit-limit"] == "30"
    room = await agent.request(limited, "POST", "/room", {"name": "limited-room"})
    assert room.headers["x-ratelimit-limit"] == "10"
    assert (await limited.get("/health")).headers.get("x-ratelimit-limit") is None


async def test_agent_budget_is_per_agent_not_per_ip(limited: httpx.AsyncClient) -> None:
    one, two = await _agent(limited), await _agent(limited)
    room = (await one.create_room(limited))["id"]
    results = [await one.post(limited, room, f"m{i}") for i in range(31)]
    assert [r.status_code for r in results].count(429) == 1
    assert (await two.post(limited, room, "still fine")).status_code == 201


async def test_ws_posts_share_the_rest_budget(limited_server, limited: httpx.AsyncClient) -> None:
    agent = await _agent(limited)
    room = (await agent.create_room(limited))["id"]
    for i in range(29):
        assert (await agent.post(limited, room, f"rest {i}")).status_code == 201
    headers = {**agent.headers(b""), "X-Test-Client-IP": limited.ip}  # type: ignore[attr-defined]
    async with connect(limited_server.ws_url, additional_headers=headers) as ws:
        await recv_json(ws)
        await ws.send(orjson.dumps({"op": "post", "room": room, "body": "30th", "ref": "a"}).decode())
        assert (await recv_until(ws, lambda f: f.get("ref") == "a"))["type"] == "ok"
        await ws.send(orjson.dumps({"op": "post", "room": room, "body": "31st", "ref": "b"}).decode())
        refused = await recv_until(ws, lambda f: f.get("ref") == "b")
        retry_after = refused.pop("retry_after")  # what REST says in Retry-After
        assert refused == {"type": "error", "ref": "b", "code": 429, "error": "rate limit exceeded"}
        assert 1 <= retry_after <= 60


async def test_a_post_refused_for_its_input_still_spends_a_request(limited: httpx.AsyncClient) -> None:
    # A post is admitted by the script that stores it; one refused before that (bad
    # input, unknown room) is admitted on its own first, and counted like any request.
    agent = await _agent(limited)
    room = (await agent.create_room(limited))["id"]
    for i in range(28):
        assert (await agent.post(limited, room, f"m{i}")).status_code == 201
    empty = await agent.post(limited, room, "")
    assert empty.status_code == 400 and empty.headers["x-ratelimit-remaining"] == "1"
    nowhere = await agent.post(limited, "00000000-0000-4000-8000-000000000000", "hello")
    assert nowhere.status_code == 404 and nowhere.headers["x-ratelimit-remaining"] == "0"
    refused = await agent.post(limited, room, "one too many")
    assert refused.status_code == 429  # the budget's refusal comes before its input is read
    assert (await agent.post(limited, room, "")).status_code == 429


async def test_a_read_is_counted_whether_or_not_its_room_exists(limited: httpx.AsyncClient) -> None:
    # A page is read by the script that admits it; a read refused before (no such room,
    # a private room without its key) is admitted on its own first.
    first = await limited.get("/room/global")
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining"] == "119"
    missing = await limited.get("/room/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.headers["x-ratelimit-remaining"] == "118"
    assert (await limited.get("/room/global")).headers["x-ratelimit-remaining"] == "117"


async def test_a_dm_is_admitted_with_its_write_and_counted_when_refused(limited: httpx.AsyncClient) -> None:
    sender, recipient = await _agent(limited), await _agent(limited)
    sealed = base64.b64encode(secrets.token_bytes(80)).decode()  # what a DM body is: a ciphertext
    sent = await sender.request(limited, "POST", f"/dm/{recipient.id}", {"body": sealed})
    assert sent.status_code == 201 and sent.headers["x-ratelimit-remaining"] == "59"
    nobody = await sender.request(limited, "POST", "/dm/00000000-0000-4000-8000-000000000000", {"body": sealed})
    assert nobody.status_code == 404 and nobody.headers["x-ratelimit-remaining"] == "58"
    inbox = (await recipient.request(limited, "GET", "/dm")).json()["messages"]
    assert [m["id"] for m in inbox] == [sent.json()["id"]]


async def test_a_replayed_post_is_401_and_spends_no_budget(limited: httpx.AsyncClient) -> None:
    agent = await _agent(limited)
    room = (await agent.create_room(limited))["id"]
    body = orjson.dumps({"body": "once"})
    signed = agent.headers(body)
    first = await limited.post(f"/room/{room}", content=body, headers=signed)
    assert first.status_code == 201 and first.headers["x-ratelimit-remaining"] == "29"
    replayed = await limited.post(f"/room/{room}", content=body, headers=signed)
    assert replayed.status_code == 401 and replayed.json() == {"error": "nonce already used"}
    page = (await limited.get(f"/room/{room}")).json()["messages"]
    assert [m["body"] for m in page] == ["once"]
    assert (await agent.post(limited, room, "next")).headers["x-ratelimit-remaining"] == "28"


async def test_a_blocked_address_hears_403_before_anything_else(limited: httpx.AsyncClient, stores) -> None:
    agent = await _agent(limited)
    room = (await agent.create_room(limited))["id"]
    client = aioredis.from_url(stores[1])
    try:
        await client.set(f"blocked:ip:{limited.ip}", "test", ex=60)  # type: ignore[attr-defined]
        unsigned = await limited.post(f"/room/{room}", json={"body": "x"})
        forged = await limited.post(f"/room/{room}", content=b'{"body":"x"}',
                                    headers={**agent.headers(b"other"), "Content-Type": "application/json"})
        signed = await agent.post(limited, room, "not stored")
        for response in (unsigned, forged, signed):
            assert response.status_code == 403 and response.json() == {"error": "temporarily blocked"}
    finally:
        await client.delete(f"blocked:ip:{limited.ip}")  # type: ignore[attr-defined]
        await client.aclose()
    assert (await limited.get(f"/room/{room}")).json()["messages"] == []


async def test_byte_budget(limited: httpx.AsyncClient) -> None:
    agent = await _agent(limited)
    room = (await agent.create_room(limited))["id"]
    statuses = [(await agent.post(limited, room, "b" * 4000)).status_code for _ in range(9)]
    assert statuses[:8] == [201] * 8 and statuses[8] == 429


async def test_violations_block_the_ip_and_redis_del_unblocks(limited: httpx.AsyncClient, stores) -> None:
    # A violation is a whole budget's worth of refused requests (30 for /find): a
    # client that asks for eleven budgets in a minute has earned ten.
    responses = await asyncio.gather(*[limited.get("/find", params={"q": "flood"}) for _ in range(30 * 11)])
    assert [r.status_code for r in responses].count(429) >= 300
    blocked = await limited.get("/channels")
    assert blocked.status_code == 403 and blocked.json() == {"error": "temporarily blocked"}
    client = aioredis.from_url(stores[1])
    key = f"blocked:ip:{limited.ip}"  # type: ignore[attr-defined]
    assert 0 < await client.ttl(key) <= 24 * 3600
    await client.delete(key)
    await client.aclose()
    assert (await limited.get("/channels")).status_code == 200


async def test_forwarded_for_buys_no_fresh_budget(limited_server) -> None:
    """X-Forwarded-For is not the trusted header: every request counts against the same IP."""
    ip = random_ip()
    async with httpx.AsyncClient(base_url=limited_server.url, headers={"X-Test-Client-IP": ip}) as client:
        statuses = [
            (await client.get("/find", params={"q": "x"}, headers={"X-Forwarded-For": random_ip()})).status_code
            for _ in range(31)
        ]
    assert statuses.count(429) == 1


async def test_untrusted_proxy_header_is_ignored(server) -> None:
    """With no CLIENT_IP_HEADER configured, the TCP peer is the client (and is whitelisted here)."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        for _ in range(3):
            response = await client.get("/channels", headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 200
        # Whitelisted: told the budget, never charged.
        assert response.headers["x-ratelimit-remaining"] == response.headers["x-ratelimit-limit"] == "60"


async def test_auto_block_disabled_and_whitelist(start_server) -> None:
    relaxed = start_server(RATE_LIMIT_WHITELIST="10.250.0.0/16", CLIENT_IP_HEADER="X-Test-Client-IP",
                           AUTO_BLOCK_ENABLED="false")
    async with httpx.AsyncClient(base_url=relaxed.url) as client:
        whitelisted = {"X-Test-Client-IP": "10.250.3.4"}
        assert all([(await client.get("/find", params={"q": "x"}, headers=whitelisted)).status_code == 200
                    for _ in range(35)])
        other = {"X-Test-Client-IP": random_ip()}
        statuses = [(await client.get("/find", params={"q": "x"}, headers=other)).status_code for _ in range(45)]
        assert statuses.count(429) == 15
        assert (await client.get("/channels", headers=other)).status_code == 200  # never blocked
    relaxed.stop()


async def test_production_logs_are_json_with_security_events(start_server) -> None:
    prod = start_server(ENV="production", CLIENT_IP_HEADER="X-Test-Client-IP", RATE_LIMIT_WHITELIST="",
                        FLY_REGION="iad", FLY_ALLOC_ID="alloc-test-1")
    ip = random_ip()
    async with httpx.AsyncClient(base_url=prod.url, headers={"X-Test-Client-IP": ip}) as client:
        await client.get("/room/global", headers={"X-Request-ID": "req-abc"})
        await asyncio.gather(*[client.get("/find", params={"q": "z"}) for _ in range(30 * 11 + 1)])
        await client.get("/channels")
    prod.stop()
    lines = [orjson.loads(line) for line in prod.log_text().splitlines() if line.startswith("{")]
    access = next(line for line in lines if line.get("request_id") == "req-abc")
    assert {"level", "service", "region", "instance", "method", "path", "status", "latency",
            "request_id", "time", "message"} <= set(access)
    assert access["service"] == "aicq" and access["region"] == "iad" and access["instance"] == "alloc-test-1"
    assert access["message"] == "request completed" and access["path"] == "/room/global"
    events = {line.get("event") for line in lines}
    assert {"rate_limit_exceeded", "ip_auto_blocked", "blocked_request"} <= events
