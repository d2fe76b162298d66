"""Private-room key guessing and room misses cost the guesser, not the service (issue 12.2).

Everything runs on the limits-enforcing server; each test is its own client IP.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from tests.helpers import Agent, random_ip, recv_json, recv_until
from tests.resilience.fuzz_support import metric

KEY = "the-right-key-0123456789"


@pytest.fixture
async def redis(stores) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stores[1])
    yield client
    await client.aclose()


def client(server, ip: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=20, headers={"X-Test-Client-IP": ip or random_ip()},
                             limits=httpx.Limits(max_connections=100))


async def private_room(server) -> dict:
    async with client(server) as http:
        owner = await Agent().register(http)
        return await owner.create_room(http, key=KEY)


async def ask(ws, op: dict) -> dict:
    ref = secrets.token_hex(4)
    await ws.send(orjson.dumps({**op, "ref": ref}).decode())
    return await recv_until(ws, lambda f: f.get("ref") == ref, timeout=10)


async def test_one_socket_guessing_keys_is_stopped_and_counted(limited_server, redis) -> None:
    """The audit's reproduction: one anonymous socket, 30 wrong keys in a row."""
    room = await private_room(limited_server)
    ip = random_ip()
    async with connect(limited_server.ws_url, additional_headers={"X-Test-Client-IP": ip}) as ws:
        await recv_json(ws)
        answers = [await ask(ws, {"op": "subscribe", "room": room["id"], "key": f"guess-{i:02d}-{KEY}"})
                   for i in range(30)]
        right = await ask(ws, {"op": "subscribe", "room": room["id"], "key": KEY})
    codes = [a["code"] for a in answers]
    assert codes == [403] * 10 + [429] * 20, codes
    assert {a["error"] for a in answers[:10]} == {"invalid room key"}
    assert all(1 <= a["retry_after"] <= 300 for a in answers[10:])
    assert right["code"] == 429  # the guesser's budget is spent, whatever it sends next
    # Twenty refusals of a ten-guess budget are two violations.
    assert int(await redis.get(f"violations:ip:{ip}")) == 2
    assert await redis.zcard(f"keyguess:ip:{ip}") == 10
    # Anyone else still gets in with the right key.
    async with client(limited_server) as http:
        response = await http.get(f"/room/{room['id']}", headers={"X-AICQ-Room-Key": KEY})
    assert response.status_code == 200, response.text


async def test_repeating_one_wrong_key_is_not_a_new_guess(limited_server, redis) -> None:
    room = await private_room(limited_server)
    ip = random_ip()
    async with client(limited_server, ip) as http:
        statuses = [(await http.get(f"/room/{room['id']}", headers={"X-AICQ-Room-Key": "a-stale-key-0123456"}))
                    .status_code for _ in range(25)]
    assert statuses == [403] * 25
    assert await redis.zcard(f"keyguess:ip:{ip}") == 1
    assert await redis.get(f"violations:ip:{ip}") is None


async def test_guesses_at_one_room_are_limited_across_addresses(limited_server, redis) -> None:
    room = await private_room(limited_server)
    path, early = f"/room/{room['id']}", random_ip()
    async with client(limited_server, early) as http:  # a member whose key was checked before
        assert (await http.get(path, headers={"X-AICQ-Room-Key": KEY})).status_code == 200

    async def guesser(n: int) -> list[int]:
        async with client(limited_server) as http:
            return [(await http.get(path, headers={"X-AICQ-Room-Key": f"guess-{n}-{i}-{KEY}"})).status_code
                    for i in range(10)]

    # Twelve addresses, ten guesses each (four at a time, under the bcrypt queue's
    # bound): the room takes 100 in five minutes, whoever sends them.
    statuses: Counter[int] = Counter()
    for first in range(0, 12, 4):
        for batch in await asyncio.gather(*[guesser(n) for n in range(first, first + 4)]):
            statuses.update(batch)
    assert statuses[403] == 100 and statuses[429] == 20, statuses
    assert await redis.zcard(f"keyguess:room:{room['id']}") == 100
    async with client(limited_server) as http:  # a newcomer's guess: refused before any bcrypt
        locked = await http.get(path, headers={"X-AICQ-Room-Key": f"one-more-{KEY}"})
        assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 300
        # A key proven right before the attack still opens the room, from anywhere.
        assert (await http.get(path, headers={"X-AICQ-Room-Key": KEY})).status_code == 200


async def test_bcrypt_work_is_bounded_and_spares_everyone_else(limited_server, redis) -> None:
    room = await private_room(limited_server)
    path = f"/room/{room['id']}"
    async with client(limited_server) as bystander_http:
        async def guess(n: int) -> httpx.Response:
            async with client(limited_server) as http:
                return await http.get(path, headers={"X-AICQ-Room-Key": f"flood-{n}-{KEY}"})

        flood = [asyncio.create_task(guess(n)) for n in range(40)]
        bystander = await bystander_http.get("/room/global")
        answers = await asyncio.gather(*flood)
    assert bystander.status_code == 200
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {403, 503} and statuses[503] >= 1, statuses
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["error"].startswith("too many room key checks") and busy.headers["retry-after"] == "1"
    # A refused check was no guess: only the ones bcrypt answered count.
    assert await redis.zcard(f"keyguess:room:{room['id']}") == statuses[403]


async def test_missing_rooms_cost_a_read_and_are_remembered(limited_server) -> None:
    ip = random_ip()
    unknown = str(uuid.uuid4())
    async with connect(limited_server.ws_url, additional_headers={"X-Test-Client-IP": ip}) as ws:
        await recv_json(ws)
        before = await asyncio.to_thread(metric, limited_server.url, "aicq_postgres_latency_seconds_count")
        again = [await ask(ws, {"op": "subscribe", "room": unknown}) for _ in range(20)]
        after = await asyncio.to_thread(metric, limited_server.url, "aicq_postgres_latency_seconds_count")
        assert {a["code"] for a in again} == {404}
        assert after - before <= 1, "an unknown id asked again must not reach PostgreSQL again"
        # Each miss costs what GET /room/{id} costs: 120 a minute, then 429.
        fresh = [await ask(ws, {"op": "subscribe", "room": str(uuid.uuid4())}) for _ in range(100)]
        dropped = await ask(ws, {"op": "unsubscribe", "room": str(uuid.uuid4())})
    assert [a["code"] for a in fresh] == [404] * 100
    assert dropped["code"] == 429 and dropped["retry_after"] >= 1


async def test_a_room_created_under_a_missing_name_is_found_at_once(limited_server) -> None:
    name = f"late-{secrets.token_hex(4)}"
    async with client(limited_server) as http:
        assert (await http.get(f"/room/{name}")).status_code == 404
        agent = await Agent().register(http)
        created = await agent.create_room(http, name)
        found = await http.get(f"/room/{name}")
    assert found.status_code == 200 and found.json()["room"] == {"id": created["id"], "name": name}
