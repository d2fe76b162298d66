"""Every Redis write counts once, even when its reply is lost and the client retries it.

A proxy in front of a real redis-server drops one reply after the command ran and
resets the connection; the client (``rediskit.connect``) retries the command once on a
fresh connection, as it must for a Redis restart to go unnoticed. Each write below
is made that way, and what it counted is checked in Redis itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from aicq import protocol, rediskit
from aicq.errors import RateLimited, Unauthorized
from aicq.history import History, messages_key
from aicq.limits import BYTE_BUDGET, LIMITS, Admission, Limiter, violation_step
from aicq.models import Message, spliced
from aicq.redislane import Lane
from tests.helpers import RedisProcess, random_ip
from tests.proxy import FaultyProxy


@pytest.fixture
async def proxy(private_redis: RedisProcess) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(private_redis.url) as proxy:
        yield proxy


@pytest.fixture
async def redis(proxy: FaultyProxy) -> AsyncIterator[aioredis.Redis]:
    client = rediskit.connect(proxy.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def direct(private_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A plain client beside the proxy, to look at what was counted."""
    client = aioredis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


def _window(action: str, ip: str, agent: str) -> Admission:
    return Admission(ip=ip, counted=True, limit=LIMITS[action], agent_id=agent)


def _bytes(ip: str, agent: str, size: int) -> Admission:
    return Admission(ip=ip, counted=True, agent_id=agent, size=size)


async def _warmed(history: History, limiter: Limiter) -> None:
    """Load every script once: a lost reply must hit the write, not its SCRIPT LOAD."""
    agent = str(uuid.uuid4())
    await limiter.admit(Admission.nonce_only(agent, "warm-up-nonce-warm-up-nonce"))
    await limiter.admit(_window("post_message", random_ip(), agent))
    await limiter.admit(_bytes(random_ip(), agent, 1))
    await _post(history, str(uuid.uuid4()), "warm up", _window("post_message", random_ip(), agent))
    await history.park_count("warm", "room", 1)
    await history.take_parked_counts("warm")
    with pytest.raises(RateLimited):  # the violation's script
        for _ in range(LIMITS["create_room"].requests + 1):
            await limiter.admit(_window("create_room", random_ip(), agent))


@pytest.fixture
async def stores(redis: aioredis.Redis, proxy: FaultyProxy) -> AsyncIterator[tuple[History, Limiter]]:
    lane = Lane(proxy.url)  # through the proxy too: its lost replies are the point
    history, limiter = History(redis, lane), Limiter(redis, lane, auto_block=True)
    await _warmed(history, limiter)
    try:
        yield history, limiter
    finally:
        await lane.close()


async def test_a_nonce_claim_retried_after_a_lost_reply_still_wins(stores, proxy: FaultyProxy) -> None:
    _, limiter = stores
    agent = str(uuid.uuid4())
    proxy.lose_reply()
    await limiter.admit(Admission.nonce_only(agent, "n" * 32))  # the retry must not take it for a replay
    assert proxy.lost_replies == 1
    with pytest.raises(Unauthorized, match="nonce already used"):  # a real replay is still refused
        await limiter.admit(Admission.nonce_only(agent, "n" * 32))


async def test_a_rate_limit_hit_retried_after_a_lost_reply_counts_once(stores, proxy: FaultyProxy,
                                                                       direct: aioredis.Redis) -> None:
    _, limiter = stores
    agent = str(uuid.uuid4())
    proxy.lose_reply()
    quota = await limiter.admit(_window("post_message", random_ip(), agent))
    assert proxy.lost_replies == 1
    limit = LIMITS["post_message"]
    assert quota.remaining == limit.requests - 1
    assert await direct.zcard(f"ratelimit:agent:{agent}:post_message:{limit.window_s}") == 1


async def test_a_byte_charge_retried_after_a_lost_reply_counts_once(stores, proxy: FaultyProxy) -> None:
    _, limiter = stores
    agent, ip = str(uuid.uuid4()), random_ip()
    proxy.lose_reply()
    # Most of the budget: the retry must not find it spent already and refuse it.
    await limiter.admit(_bytes(ip, agent, BYTE_BUDGET * 3 // 4))
    assert proxy.lost_replies == 1
    await limiter.admit(_bytes(ip, agent, BYTE_BUDGET // 4))  # the rest, exactly
    with pytest.raises(RateLimited):
        await limiter.admit(_bytes(ip, agent, 1))


async def test_a_violation_retried_after_a_lost_reply_counts_once(stores, proxy: FaultyProxy,
                                                                  direct: aioredis.Redis) -> None:
    _, limiter = stores
    agent, ip = str(uuid.uuid4()), random_ip()
    budget = LIMITS["create_room"].requests
    for _ in range(budget):
        await limiter.admit(_window("create_room", ip, agent))
    for _ in range(violation_step("create_room") - 1):  # refusals short of a violation
        with pytest.raises(RateLimited):
            await limiter.admit(_window("create_room", ip, agent))
    assert await direct.get(f"violations:ip:{ip}") is None
    # The window's refusal and the refusal count arrive; the violation's answer is lost.
    proxy.lose_reply(after=2)
    with pytest.raises(RateLimited):
        await limiter.admit(_window("create_room", ip, agent))
    assert proxy.lost_replies == 1
    assert await direct.get(f"violations:ip:{ip}") == b"1"


async def test_an_admitted_post_retried_after_a_lost_reply_counts_and_stores_once(
        stores, proxy: FaultyProxy, direct: aioredis.Redis) -> None:
    history, _ = stores
    agent, ip, room = str(uuid.uuid4()), random_ip(), str(uuid.uuid4())
    admission = replace(_window("post_message", ip, agent), nonce="p" * 32).charging(100)
    proxy.lose_reply()
    message = await _post(history, room, "posted once", admission)
    assert proxy.lost_replies == 1
    assert await direct.zrange(messages_key(room), 0, -1) == [await direct.hget(f"room:{room}:index", message.id)]
    limit = LIMITS["post_message"]
    assert await direct.zcard(f"ratelimit:agent:{agent}:post_message:{limit.window_s}") == 1
    assert await direct.zcard(f"msgbytes:{agent}") == 1
    assert await direct.get(f"nonce:{agent}:{'p' * 32}") == admission.token.encode()


async def test_a_parked_count_retried_after_a_lost_reply_counts_once(stores, proxy: FaultyProxy) -> None:
    history, _ = stores
    database = uuid.uuid4().hex
    proxy.lose_reply()
    await history.park_count(database, "room", 1)
    assert proxy.lost_replies == 1
    assert await history.take_parked_counts(database) == {"room": 1}


async def test_parked_counts_taken_with_a_lost_reply_are_not_lost(stores, proxy: FaultyProxy) -> None:
    history, _ = stores
    database = uuid.uuid4().hex
    await history.park_count(database, "room", 3)
    proxy.lose_reply()
    assert await history.take_parked_counts(database) == {"room": 3}
    assert proxy.lost_replies == 1
    assert await history.take_parked_counts(database) == {}


async def test_a_delete_retried_after_a_lost_reply_reports_the_deletion(stores, proxy: FaultyProxy,
                                                                        direct: aioredis.Redis) -> None:
    history, _ = stores
    room = str(uuid.uuid4())
    first, second = [await _post(history, room, "to be deleted") for _ in range(2)]
    assert await _delete(history, room, first) is not None  # loads the scripts
    proxy.lose_reply(after=1)  # the lookup answers; the delete's answer is lost
    deleted = await _delete(history, room, second)
    assert proxy.lost_replies == 1
    assert deleted is not None and deleted.id == second.id, "the retry found nothing to delete: 404"
    assert await direct.zcard(messages_key(room)) == 0


async def _post(history: History, room: str, body: str, admission: Admission | None = None) -> Message:
    draft = Message.draft(room, admission.agent_id if admission else str(uuid.uuid4()), body, None)
    appended = await history.append(draft, public=True, words=["deleted"],
                                    frame=spliced(protocol.message_event_data(draft)), database="test",
                                    admission=admission)
    assert appended.verdict[0] == b"ok" and appended.value is not None, appended.verdict
    return appended.value


async def _delete(history: History, room: str, message: Message) -> Message | None:
    return await history.delete(room, message.id, words=["deleted"],
                                frame=protocol.deleted_event(room, message.id))
