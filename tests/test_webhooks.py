"""Webhooks end to end: real servers deliver to real receivers on loopback.

Every test server may deliver any test's webhooks (they share one stream), so the
shared ones all run with WEBHOOK_ALLOW_PRIVATE=1 and a fast retry schedule
(conftest). Tests that need other settings, or need to know which instance
delivered, get stores of their own (``own_server``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from aicq.webhooks.worker import PER_WEBHOOK
from tests.conftest import LOG_DIR
from tests.helpers import Agent, ServerProcess, new_agent
from tests.stores import test_stores as fresh_stores
from tests.webhook_receiver import Receiver

CIPHERTEXT = base64.b64encode(bytes(range(64))).decode()
KEY = "a-private-room-key-0123"
GLOBAL = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiving = await Receiver().start()
    yield receiving
    await receiving.stop()


@pytest.fixture
def own_stores() -> Iterator[Callable[..., ServerProcess]]:
    """``start(**env)``: a server on stores of this test's own (nobody else delivers there)."""
    with ExitStack() as stack:
        database_url, redis_url = stack.enter_context(fresh_stores())
        started: list[ServerProcess] = []

        def start(**env: str) -> ServerProcess:
            environment = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "RATE_LIMIT_WHITELIST": "127.0.0.1",
                           "WEBHOOK_RETRY_BASE_MS": "200", "WEBHOOK_CLAIM_IDLE_MS": "1000", **env}
            server = ServerProcess(environment, LOG_DIR / f"webhooks-{len(started)}-{secrets.token_hex(3)}.log")
            started.append(server)
            return server.start()

        start.urls = (database_url, redis_url)  # type: ignore[attr-defined]
        yield start
        for server in started:
            server.stop()


async def add_webhook(http: httpx.AsyncClient, agent: Agent, url: str, events: list[str],
                      headers: dict[str, str] | None = None) -> dict:
    response = await agent.request(http, "POST", "/webhooks", {"url": url, "events": events}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def webhook_state(http: httpx.AsyncClient, agent: Agent, webhook_id: str) -> dict:
    response = await agent.request(http, "GET", "/webhooks")
    assert response.status_code == 200, response.text
    return next(w for w in response.json()["webhooks"] if w["id"] == webhook_id)


async def eventually(probe: Callable[[], object], timeout: float = 15.0) -> object:
    """Poll a server-side state until it holds (there is no event to await for it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()  # type: ignore[misc]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


# Delivery


async def test_a_dm_and_a_mention_each_reach_the_webhook_once_signed(http: httpx.AsyncClient,
                                                                     receiver: Receiver) -> None:
    name = f"sleeper-{secrets.token_hex(4)}"
    sleeper, friend = await new_agent(http, name), await new_agent(http)
    webhook = await add_webhook(http, sleeper, receiver.url(), ["dm", "mention"])
    key = webhook["signing_key"]
    assert key == (await http.get("/api")).json()["webhook_key"]
    assert key == (await http.get("/.well-known/aicq-webhook-key")).json()["public_key"]

    dm = (await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})).json()
    post = (await friend.post(http, "global", f"@{name} are you up?")).json()
    await receiver.wait_until(lambda: len(receiver.delivered()) == 2)
    await eventually(lambda: _outcomes(http, sleeper, webhook["id"], {"delivered": 2}))

    assert set(receiver.delivered().values()) == {1}, receiver.delivered()  # once per delivery id
    events = {r.headers["x-aicq-event"]: r.event(key) for r in receiver.requests}
    assert events["dm"] == {"type": "dm", "msg": {"id": dm["id"], "from": friend.id, "body": CIPHERTEXT,
                                                  "ts": dm["ts"]}}
    assert events["mention"] == {"type": "mention", "room": GLOBAL, "msg": {
        "id": post["id"], "from": friend.id, "body": f"@{name} are you up?", "ts": post["ts"]}}
    for request in receiver.requests:
        assert request.headers["x-aicq-webhook"] == webhook["id"] and request.attempt == 1
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("AICQ-Webhook/")


async def test_a_room_webhook_gets_every_message_but_its_owner_s(http: httpx.AsyncClient,
                                                                 receiver: Receiver) -> None:
    owner, other = await new_agent(http), await new_agent(http)
    room = (await owner.create_room(http))["name"]
    webhook = await add_webhook(http, owner, receiver.url(), [f"room:{room}"])
    assert webhook["events"][0].startswith("room:") and webhook["events"][0] != f"room:{room}"  # by id
    await owner.post(http, room, "mine")
    theirs = (await other.post(http, room, "theirs")).json()
    await eventually(lambda: _outcomes(http, owner, webhook["id"], {"delivered": 1}))
    assert [r.event(webhook["signing_key"])["msg"]["id"] for r in receiver.requests] == [theirs["id"]]


async def test_a_receiver_down_for_a_while_gets_everything_after_retries(http: httpx.AsyncClient) -> None:
    sleeper, friend = await new_agent(http), await new_agent(http)
    receiver = Receiver()
    port = (await receiver.start()).port
    await receiver.stop()  # nobody listens on the port now
    webhook = await add_webhook(http, sleeper, receiver.url(), ["dm"])
    sent = [(await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})).json()["id"]
            for _ in range(5)]

    async def backing_off() -> dict | None:
        # Each round, a delivery probes the endpoint (one per instance), ever later;
        # the others wait parked.
        state = await webhook_state(http, sleeper, webhook["id"])
        failed = [r for r in state["recent_deliveries"] if r["outcome"] == "failed"]
        return state if state["status"] == "failing" and max((r["attempt"] for r in failed), default=0) >= 3 \
            else None

    state = await eventually(backing_off)
    assert "cannot connect" in state["recent_deliveries"][0]["error"] and state["failing_since"]

    await receiver.start(port)  # back up
    try:
        await receiver.wait_until(lambda: len(receiver.delivered()) == 5, timeout=20)
        got = [r.event(webhook["signing_key"])["msg"]["id"] for r in receiver.requests]
        assert sorted(got) == sorted(sent) and set(receiver.delivered().values()) == {1}
        assert max(r.attempt for r in receiver.requests) >= 4  # the probe, finally through
        assert (await eventually(lambda: _status(http, sleeper, webhook["id"], "active")))
    finally:
        await receiver.stop()


async def test_a_slow_receiver_does_not_hold_up_posting(http: httpx.AsyncClient, receiver: Receiver) -> None:
    owner, poster = await new_agent(http), await new_agent(http)
    room = (await owner.create_room(http))["id"]
    listeners = [await new_agent(http) for _ in range(5)]
    for agent in listeners:
        await add_webhook(http, agent, receiver.url(f"/{agent.id}"), [f"room:{room}"])
    receiver.hold()  # every delivery waits for an answer
    first = await poster.post(http, room, "first")
    assert first.status_code == 201
    await receiver.wait_until(lambda: receiver.held >= 1)
    posted = [await poster.post(http, room, f"while held {i}") for i in range(10)]
    assert [p.status_code for p in posted] == [201] * 10
    assert receiver.held >= 1  # deliveries were still waiting all along
    history = (await http.get(f"/room/{room}?limit=20")).json()["messages"]
    assert len(history) == 11
    receiver.release()
    # 11 messages to 5 webhooks, whatever was retried in between.
    await receiver.wait_until(lambda: len(receiver.delivered()) == 55, timeout=30)


async def test_a_slow_endpoint_takes_a_few_slots_and_never_holds_up_a_healthy_one(own_stores) -> None:
    server = own_stores(WEBHOOK_ALLOW_PRIVATE="1")
    slow, healthy = await Receiver().start(), await Receiver().start()
    slow.hold()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            owner, poster = await new_agent(http), await new_agent(http)
            room = (await owner.create_room(http))["id"]
            for receiving in (slow, healthy):
                await add_webhook(http, await new_agent(http), receiving.url(), [f"room:{room}"])
            for i in range(30):
                assert (await poster.post(http, room, f"burst {i}")).status_code == 201
            await healthy.wait_until(lambda: len(healthy.delivered()) == 30, timeout=20)
            assert 1 <= slow.held <= PER_WEBHOOK  # the slow one got its few attempts at once, no more
    finally:
        for receiving in (slow, healthy):
            await receiving.stop()
        server.stop()


# Registration rules


async def test_registration_rules(http: httpx.AsyncClient, receiver: Receiver) -> None:
    agent, other = await new_agent(http), await new_agent(http)

    async def register(data: object, who: Agent = agent, **headers: str) -> httpx.Response:
        return await who.request(http, "POST", "/webhooks", data, headers=headers or None)

    assert (await http.post("/webhooks", json={"url": receiver.url(), "events": ["dm"]})).status_code == 401
    for bad in ({"events": ["dm"]}, {"url": receiver.url()}, {"url": receiver.url(), "events": ["everything"]},
                {"url": "gopher://x/", "events": ["dm"]}, {"url": receiver.url(), "events": "dm"}):
        response = await register(bad)
        assert response.status_code == 400 and response.json()["error"], (bad, response.text)
    missing = await register({"url": receiver.url(), "events": [f"room:{secrets.token_hex(5)}"]})
    assert missing.status_code == 404
    refused = await register({"url": "http://no-such-host.invalid/x", "events": ["dm"]})
    assert refused.status_code == 422 and "does not resolve" in refused.json()["error"]

    room = (await other.create_room(http, key=KEY))["id"]
    private = await register({"url": receiver.url(), "events": [f"room:{room}"]})
    assert private.status_code == 403 and "private" in private.json()["error"]
    wrong = await register({"url": receiver.url(), "events": [f"room:{room}"]}, **{"X-AICQ-Room-Key": "x" * 20})
    assert wrong.status_code == 403
    with_key = await register({"url": receiver.url("/p"), "events": [f"room:{room}"]}, **{"X-AICQ-Room-Key": KEY})
    assert with_key.status_code == 201, with_key.text

    assert (await register({"url": receiver.url("/p"), "events": ["dm"]})).status_code == 409
    for i in range(4):
        assert (await register({"url": receiver.url(f"/{i}"), "events": ["dm"]})).status_code == 201
    full = await register({"url": receiver.url("/6"), "events": ["dm"]})
    assert full.status_code == 422 and "at most 5" in full.json()["error"]

    listed = (await agent.request(http, "GET", "/webhooks")).json()
    assert len(listed["webhooks"]) == 5 and listed["signing_key"]
    victim = listed["webhooks"][0]["id"]
    assert (await other.request(http, "DELETE", f"/webhooks/{victim}")).status_code == 404
    assert (await agent.request(http, "DELETE", "/webhooks/not-a-uuid")).status_code == 400
    assert (await agent.request(http, "DELETE", f"/webhooks/{victim}")).status_code == 204
    assert (await agent.request(http, "DELETE", f"/webhooks/{victim}")).status_code == 404
    assert len((await agent.request(http, "GET", "/webhooks")).json()["webhooks"]) == 4


async def test_a_deleted_webhook_is_unlisted_at_once(http: httpx.AsyncClient, receiver: Receiver,
                                                     stores: tuple[str, str]) -> None:
    sleeper, friend = await new_agent(http), await new_agent(http)
    webhook = await add_webhook(http, sleeper, receiver.url(), ["dm", "mention"])
    await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})
    await receiver.wait_until(lambda: len(receiver.delivered()) == 1)
    async with aioredis.from_url(stores[1]) as redis:
        targets = [f"webhooks:to:dm:{sleeper.id}", f"webhooks:to:mention:{sleeper.id}"]
        assert [await redis.smembers(t) for t in targets] == [{f"{webhook['id']}|{sleeper.id}".encode()}] * 2
        assert (await sleeper.request(http, "DELETE", f"/webhooks/{webhook['id']}")).status_code == 204
        # The scripts that store messages read these sets: nothing can be queued for it now.
        assert [await redis.smembers(t) for t in targets] == [set(), set()]


# Safety: which destinations are called


async def test_private_destinations_are_refused_without_the_operator_flag(own_stores) -> None:
    server = own_stores(WEBHOOK_ALLOW_PRIVATE="0")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            agent = await new_agent(http)
            for url, why in [("http://127.0.0.1:9/hook", "loopback"), ("http://localhost/x", "loopback"),
                             ("http://[::1]:80/", "loopback"), ("http://10.0.0.7/x", "private"),
                             ("http://169.254.169.254/latest/meta-data/", "metadata"),
                             ("http://[::ffff:192.168.1.1]/", "private"), ("http://0.0.0.0:8080/", "private")]:
                response = await agent.request(http, "POST", "/webhooks", {"url": url, "events": ["dm"]})
                assert response.status_code == 422 and why in response.json()["error"], (url, response.text)
            assert (await agent.request(http, "GET", "/webhooks")).json()["webhooks"] == []
    finally:
        server.stop()


async def test_every_delivery_checks_the_address_again(own_stores, receiver: Receiver) -> None:
    """A name that resolved to a public address at registration and to a private one
    later (DNS rebinding) is refused at delivery: simulated by writing the webhook
    into the stores directly, as registration would have."""
    server = own_stores(WEBHOOK_ALLOW_PRIVATE="0")
    database_url, redis_url = own_stores.urls
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            sleeper, friend = await new_agent(http), await new_agent(http)
            conn = await asyncpg.connect(database_url)
            try:
                webhook_id = str(await conn.fetchval(
                    "INSERT INTO webhooks (agent_id, url, events) VALUES ($1, $2, $3) RETURNING id",
                    sleeper.id, receiver.url(), ["dm"]))
            finally:
                await conn.close()
            async with aioredis.from_url(redis_url) as redis:
                await redis.sadd(f"webhooks:to:dm:{sleeper.id}", f"{webhook_id}|{sleeper.id}")
            await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})
            state = await eventually(lambda: _failed_once(http, sleeper, webhook_id))
            assert "127.0.0.1, a loopback address" in state["recent_deliveries"][0]["error"]
            assert receiver.requests == []
    finally:
        server.stop()


async def test_an_endpoint_failing_for_the_whole_window_is_disabled(own_stores) -> None:
    server = own_stores(WEBHOOK_ALLOW_PRIVATE="1", WEBHOOK_RETRY_WINDOW_S="2")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            sleeper, friend = await new_agent(http), await new_agent(http)
            failing = Receiver(status=500)
            await failing.start()
            try:
                webhook = await add_webhook(http, sleeper, failing.url(), ["dm"])
                sent = time.monotonic()
                await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})
                state = await eventually(lambda: _status(http, sleeper, webhook["id"], "disabled"))
                assert time.monotonic() - sent >= 2
                assert "every delivery failed for 2 s" in state["disabled_reason"], state
                assert "HTTP 500" in state["disabled_reason"] and state["disabled_at"]
                assert state["recent_deliveries"][0]["outcome"] == "dropped"
                assert len(failing.requests) >= 2 and {r.delivery for r in failing.requests} == {
                    failing.requests[0].delivery}
                metrics = (await http.get("/metrics")).text
                for line in ('aicq_webhook_deliveries_total{outcome="dropped"} 1.0',
                             'aicq_webhook_deliveries_total{outcome="failed"}', "aicq_webhook_retries_total",
                             "aicq_webhook_endpoints_disabled_total 1.0"):
                    assert line in metrics, line
                # Disabled: a new DM queues nothing for it.
                async with aioredis.from_url(own_stores.urls[1]) as redis:
                    await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})
                    assert await redis.xlen("webhooks:queue") == 0
                    assert await redis.zcard("webhooks:retry") == 0
            finally:
                await failing.stop()
    finally:
        server.stop()


async def test_queue_metrics(own_stores, receiver: Receiver) -> None:
    server = own_stores(WEBHOOK_ALLOW_PRIVATE="1")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            sleeper, friend = await new_agent(http), await new_agent(http)
            await add_webhook(http, sleeper, receiver.url(), ["dm"])
            receiver.hold()
            await friend.request(http, "POST", f"/dm/{sleeper.id}", {"body": CIPHERTEXT})
            await receiver.wait_until(lambda: receiver.held == 1)

            async def pending_seen() -> str | None:
                text = (await http.get("/metrics")).text
                return text if 'aicq_webhook_queue_depth{state="ready"} 1.0' in text else None

            text = await eventually(pending_seen)
            age = float(next(line.split()[1] for line in text.splitlines()
                             if line.startswith("aicq_webhook_oldest_pending_seconds")))
            assert 0 <= age < 60
            receiver.release()
            await receiver.wait_until(lambda: len(receiver.delivered()) == 1)
            text = await eventually(lambda: _metric_contains(http, 'aicq_webhook_queue_depth{state="ready"} 0.0'))
            assert 'aicq_webhook_deliveries_total{outcome="delivered"} 1.0' in text
            assert "aicq_webhook_oldest_pending_seconds 0.0" in text
            assert "aicq_webhook_attempt_duration_seconds_count 1.0" in text
    finally:
        server.stop()


# Helpers


async def _outcomes(http: httpx.AsyncClient, agent: Agent, webhook_id: str, expected: dict[str, int]) -> bool:
    state = await webhook_state(http, agent, webhook_id)
    seen = collections.Counter(r["outcome"] for r in state["recent_deliveries"])
    return all(seen[k] >= v for k, v in expected.items())


async def _status(http: httpx.AsyncClient, agent: Agent, webhook_id: str, status: str) -> dict | None:
    state = await webhook_state(http, agent, webhook_id)
    return state if state["status"] == status else None


async def _failed_once(http: httpx.AsyncClient, agent: Agent, webhook_id: str) -> dict | None:
    state = await webhook_state(http, agent, webhook_id)
    return state if state["recent_deliveries"] else None


async def _metric_contains(http: httpx.AsyncClient, needle: str) -> str | None:
    text = (await http.get("/metrics")).text
    return text if needle in text else None

