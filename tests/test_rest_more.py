"""DMs, delete, search, stats, health, docs and metrics through real HTTP (SPEC §4, §8)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets

import httpx
import pytest

from tests.helpers import RedisProcess, new_agent, settled_message_count


def ciphertext(size: int = 60) -> str:
    return base64.b64encode(os.urandom(size)).decode()


async def test_dm_round_trip_newest_first(http: httpx.AsyncClient) -> None:
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    sent = []
    for _ in range(3):
        response = await alice.request(http, "POST", f"/dm/{bob.id}", {"body": ciphertext(80)})
        assert response.status_code == 201
        sent.append(response.json())
    inbox = (await bob.request(http, "GET", "/dm")).json()["messages"]
    assert [m["id"] for m in inbox] == [s["id"] for s in reversed(sent)]
    assert set(inbox[0]) == {"id", "from", "body", "ts"} and inbox[0]["from"] == alice.id
    limited = (await bob.request(http, "GET", "/dm", params={"limit": 1})).json()["messages"]
    assert len(limited) == 1
    assert (await alice.request(http, "GET", "/dm")).json()["messages"] == []


@pytest.mark.parametrize("body, status", [
    (None, 400), ("", 400), (5, 400), ("not base64 !!", 422), (base64.b64encode(b"x" * 59).decode(), 422),
    ("A" * 8196, 413),
], ids=["missing", "empty", "number", "not-base64", "59-bytes", "over-8kb"])
async def test_dm_validation(http: httpx.AsyncClient, body: object, status: int) -> None:
    alice, bob = await new_agent(http), await new_agent(http)
    data = {} if body is None else {"body": body}
    response = await alice.request(http, "POST", f"/dm/{bob.id}", data)
    assert response.status_code == status, response.text
    if status == 422:
        assert "/docs" in response.json()["error"]


async def test_dm_recipient_errors(http: httpx.AsyncClient) -> None:
    alice = await new_agent(http)
    missing = await alice.request(http, "POST", "/dm/7f1c2d3e-0000-4000-8000-000000000000", {"body": ciphertext()})
    assert missing.status_code == 404
    bad = await alice.request(http, "POST", "/dm/nobody", {"body": ciphertext()})
    assert bad.status_code == 400
    assert (await http.get("/dm")).status_code == 401


async def test_delete_by_author_admin_and_others(start_server, http: httpx.AsyncClient) -> None:
    author, other, admin = await new_agent(http), await new_agent(http), await new_agent(http)
    admin_server = start_server(ADMIN_AGENT_ID=admin.id)
    room = (await author.create_room(http))["id"]
    first = (await author.post(http, room, "delete me please")).json()["id"]
    second = (await author.post(http, room, "admin removes this")).json()["id"]
    assert (await other.request(http, "DELETE", f"/room/{room}/{first}")).status_code == 403
    assert (await author.request(http, "DELETE", f"/room/{room}/{first}")).status_code == 204
    assert (await author.request(http, "DELETE", f"/room/{room}/{first}")).status_code == 404
    assert (await author.request(http, "DELETE", f"/room/{room}/not-an-id")).status_code == 404
    # The shared server has no admin: there, the admin is just another agent.
    assert (await admin.request(http, "DELETE", f"/room/{room}/{second}")).status_code == 403
    async with httpx.AsyncClient(base_url=admin_server.url, timeout=10) as admin_http:
        assert (await admin.request(admin_http, "DELETE", f"/room/{room}/{second}")).status_code == 204
    admin_server.stop()
    assert (await http.get(f"/room/{room}")).json()["messages"] == []
    assert (await http.get("/find", params={"q": "delete please"})).json()["results"] == []
    assert await settled_message_count(http, room, 0) == 0


async def test_search_semantics(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = await agent.create_room(http)
    other = await agent.create_room(http)
    word = f"zq{secrets.token_hex(4)}"
    a = (await agent.post(http, room["id"], f"The {word} is a go project")).json()
    b = (await agent.post(http, other["id"], f"{word} in python")).json()
    both = (await http.get("/find", params={"q": word})).json()
    assert [r["id"] for r in both["results"]] == [b["id"], a["id"]] and both["total"] == 2
    hit = both["results"][1]
    assert hit == {"id": a["id"], "room_id": room["id"], "room_name": room["name"], "from": agent.id,
                   "body": f"The {word} is a go project", "ts": a["ts"]}
    assert [r["id"] for r in (await http.get("/find", params={"q": f"{word} go"})).json()["results"]] == [a["id"]]
    assert (await http.get("/find", params={"q": f"{word} rust"})).json()["results"] == []
    by_room = (await http.get("/find", params={"q": word, "room": other["id"]})).json()
    assert [r["id"] for r in by_room["results"]] == [b["id"]]
    after = (await http.get("/find", params={"q": word, "after": a["ts"]})).json()
    assert a["id"] not in [r["id"] for r in after["results"]]
    assert len((await http.get("/find", params={"q": word, "limit": 1})).json()["results"]) == 1
    assert (await http.get("/find", params={"q": "the is a"})).json()["results"] == []
    assert (await http.get("/find")).status_code == 400


async def test_private_rooms_never_reach_search_stats_or_channels(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key = secrets.token_hex(10)
    room = await agent.create_room(http, key=key)
    secret = f"classified{secrets.token_hex(4)}"
    response = await agent.request(http, "POST", f"/room/{room['id']}", {"body": secret},
                                   headers={"X-AICQ-Room-Key": key})
    assert response.status_code == 201
    assert (await http.get("/find", params={"q": secret})).json()["results"] == []
    assert secret not in (await http.get("/stats")).text
    channels = (await http.get("/channels", params={"limit": 100})).text
    assert room["id"] not in channels
    # Filtering by a private room finds nothing, and says nothing about the room.
    by_room = await http.get("/find", params={"q": secret, "room": room["id"]})
    assert by_room.status_code == 200 and by_room.json()["results"] == []


async def test_stats(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http, "stat-agent")
    room = (await agent.create_room(http))["id"]
    posted = (await agent.post(http, room, "s" * 300)).json()
    stats = (await http.get("/stats")).json()
    assert stats["total_agents"] >= 1 and stats["total_channels"] >= 2 and stats["total_messages"] >= 1
    assert stats["last_activity"] in ("just now", "1 minute ago") or stats["last_activity"].endswith("ago")
    recent = next(m for m in stats["recent_messages"] if m["id"] == posted["id"])
    assert recent == {"id": posted["id"], "agent_id": agent.id, "agent_name": "stat-agent",
                      "body": "s" * 200, "timestamp": posted["ts"]}
    assert all(set(c) == {"id", "name", "message_count"} for c in stats["top_channels"])


async def test_health_api_docs_openapi(http: httpx.AsyncClient) -> None:
    health = (await http.get("/health")).json()
    assert health["status"] == "healthy" and health["version"] and health["instance"]
    assert {c["status"] for c in health["checks"].values()} == {"pass"}
    assert re.match(r"^[\d.]+ms$", health["checks"]["redis"]["latency"])
    api = (await http.get("/api")).json()
    assert api == {"name": "AICQ", "version": health["version"], "docs": "/docs", "webhook_key": api["webhook_key"]}
    assert len(base64.b64decode(api["webhook_key"], validate=True)) == 32
    docs = await http.get("/docs")
    assert docs.headers["content-type"].startswith("text/markdown") and "Onboarding" in docs.text
    spec = await http.get("/docs/openapi.yaml")
    assert spec.status_code == 200 and spec.text.startswith("openapi: 3.1")


async def test_health_degrades_when_redis_is_gone_and_recovers(start_server, tmp_path) -> None:
    redis_server = RedisProcess(tmp_path).start()
    try:
        server = start_server(REDIS_URL=redis_server.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 200
            redis_server.stop()
            degraded = await http.get("/health")
            assert degraded.status_code == 503
            body = degraded.json()
            assert body["status"] == "degraded" and body["checks"]["redis"]["status"] == "fail"
            assert body["checks"]["postgres"]["status"] == "pass"
            failing = await http.get("/room/global")
            assert failing.status_code == 503 and failing.json()["error"]
            redis_server.start()
            for _ in range(100):
                if (await http.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get("/health")).json()["status"] == "healthy"
        server.stop()
    finally:
        redis_server.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in metric for k, v in labels.items()):
            total += float(value)
    return total


async def test_every_metric_moves(http: httpx.AsyncClient, server) -> None:
    before = (await http.get("/metrics")).text
    alice, bob = await new_agent(http), await new_agent(http)
    room = (await alice.create_room(http))["id"]
    await alice.post(http, room, "metrics please")
    await alice.request(http, "POST", f"/dm/{bob.id}", {"body": ciphertext()})
    await http.get("/find", params={"q": "metrics"})
    await http.get(f"/who/{alice.id}")
    from websockets.asyncio.client import connect

    async with connect(server.ws_url) as ws:
        await ws.recv()
        await ws.send(f'{{"op": "subscribe", "room": "{room}", "ref": 1}}')
        await ws.recv()
        during = (await http.get("/metrics")).text
        await alice.post(http, room, "delivered live")
        await ws.recv()
    after = (await http.get("/metrics")).text
    assert _metric(after, "aicq_agents_registered_total") >= _metric(before, "aicq_agents_registered_total") + 2
    assert _metric(after, "aicq_messages_posted_total", room_type="public") >= _metric(before, "aicq_messages_posted_total", room_type="public") + 2
    assert _metric(after, "aicq_dms_sent_total") > _metric(before, "aicq_dms_sent_total")
    assert _metric(after, "aicq_search_queries_total") > _metric(before, "aicq_search_queries_total")
    assert _metric(after, "aicq_redis_latency_seconds_count") > _metric(before, "aicq_redis_latency_seconds_count")
    assert _metric(after, "aicq_postgres_latency_seconds_count") > _metric(before, "aicq_postgres_latency_seconds_count")
    assert _metric(during, "aicq_ws_sessions") >= 1
    assert _metric(after, "aicq_ws_events_delivered_total") > _metric(before, "aicq_ws_events_delivered_total")
    assert _metric(after, "aicq_ws_delivery_latency_seconds_count") > _metric(before, "aicq_ws_delivery_latency_seconds_count")
    assert _metric(after, "aicq_http_requests_total", method="GET", path="/who/{id}", status="200") >= 1
    assert 'path="/who/' + alice.id not in after  # templates, never raw ids
    assert _metric(after, "aicq_http_request_duration_seconds_count", method="POST", path="/room/{id}") >= 2


async def test_parked_message_counts_reach_postgres(http: httpx.AsyncClient, stores) -> None:
    """A count PostgreSQL missed (parked in Redis during an outage) is applied later."""
    import redis.asyncio as aioredis

    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    import hashlib

    client = aioredis.from_url(stores[1])
    database = hashlib.sha256(stores[0].encode()).hexdigest()[:16]
    await client.hincrby(f"counts:parked:{database}", room, 3)
    await client.aclose()

    async def count() -> int:
        listed = (await http.get("/channels", params={"limit": 100})).json()["channels"]
        return next(c["message_count"] for c in listed if c["id"] == room)

    for _ in range(100):  # counts move to PostgreSQL every second; bounded at 10 s
        if await count() == 3:
            break
        await asyncio.sleep(0.1)
    assert await count() == 3
