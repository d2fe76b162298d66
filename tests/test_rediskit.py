"""The Redis client's bounds and retry policy, against a real redis-server of the
module's own that the tests freeze (SIGSTOP), restart, and cut off through a proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aicq import rediskit
from aicq.errors import Unavailable
from tests.helpers import RedisProcess
from tests.outages import Way, away
from tests.proxy import FaultyProxy


@pytest.fixture
async def client(private_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    redis = rediskit.connect(private_redis.url)
    await redis.ping()  # a pooled connection, as a running server has
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_a_command_that_timed_out_is_not_sent_again(private_redis: RedisProcess,
                                                          client: aioredis.Redis) -> None:
    """Frozen past the command timeout, then back: the INCR runs once, not twice (a
    retry on a fresh connection would have run it again as soon as Redis woke)."""
    key = "rediskit:timed-out"
    async with away(private_redis, Way.FROZEN) as freeze:
        command = asyncio.create_task(client.incr(key))
        await asyncio.wait({command}, timeout=rediskit.COMMAND_TIMEOUT_S + 1.0)
        await freeze.end()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(command, 5)
    assert await client.get(key) == b"1"


async def test_a_request_waits_on_redis_for_its_budget_in_all(client: aioredis.Redis) -> None:
    """Several slow commands (a BLPOP that waits 0.3 s stands for one) share one budget."""
    started, done = time.perf_counter(), 0
    with rediskit.budget(1.0), pytest.raises(Unavailable):
        for _ in range(10):
            await rediskit.timed(client.blpop(["rediskit:nothing"], timeout=0.3))
            done += 1
    elapsed = time.perf_counter() - started
    print(f"{done} slow commands, then a 503 after {elapsed:.3f}s")
    # What matters is the bound: the request ends within its budget. How many commands
    # fit depends on how long each really took (a loaded machine stretches them).
    assert 2 <= done <= 4 and elapsed < 1.0 + 0.5


async def test_a_frozen_redis_is_a_503_within_the_budget(private_redis: RedisProcess,
                                                         client: aioredis.Redis) -> None:
    async with away(private_redis, Way.FROZEN):
        started = time.perf_counter()
        with rediskit.budget(0.5), pytest.raises(Unavailable):
            await rediskit.timed(client.get("rediskit:anything"))
        elapsed = time.perf_counter() - started
    assert 0.5 <= elapsed < 0.5 + 0.5


async def test_a_restart_costs_no_request(private_redis: RedisProcess, client: aioredis.Redis) -> None:
    """Every pooled connection is dead once after a restart: retried, not refused."""
    async with away(private_redis, Way.STOPPED):
        pass
    with rediskit.budget():
        assert await rediskit.timed(client.set("rediskit:after-restart", b"1"))


async def test_a_lost_reply_is_retried_once_on_a_fresh_connection(private_redis: RedisProcess) -> None:
    proxy = await FaultyProxy(private_redis.url).start()
    redis = rediskit.connect(proxy.url)
    try:
        await redis.delete("rediskit:lost")
        proxy.lose_reply()
        with rediskit.budget():
            assert await rediskit.timed(redis.incr("rediskit:lost")) == 2  # it ran twice: INCR is not
        assert proxy.lost_replies == 1  # idempotent, which is why our writes carry tokens
    finally:
        await redis.aclose()
        await proxy.stop()


async def _listen(pubsub: aioredis.client.PubSub, liveness: rediskit.Liveness, seconds: float) -> int:
    """Read as the hub does for ``seconds``; returns how many pongs came back."""
    pongs = 0
    async with asyncio.timeout(seconds + 2):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.1)
            if message is None:
                await liveness.check(pubsub)
            else:
                pongs += message["type"] == "pong"
                liveness.heard()
    return pongs


async def test_a_subscriber_whose_redis_went_silent_is_declared_lost(private_redis: RedisProcess) -> None:
    """Quiet but answering is fine; silent (a partition: nothing comes back) is lost."""
    proxy = await FaultyProxy(private_redis.url).start()
    redis = rediskit.connect(proxy.url)
    pubsub = redis.pubsub()
    liveness = rediskit.Liveness(quiet_s=0.2, answer_s=0.5)
    try:
        await pubsub.subscribe("rediskit:channel")
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        liveness.heard()
        assert await _listen(pubsub, liveness, 1.5) >= 2  # pinged when quiet, and answered
        proxy.partition()
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await _listen(pubsub, liveness, 5)
        assert time.monotonic() - started < 0.2 + 0.5 + 0.5
    finally:
        await pubsub.aclose()
        await redis.aclose()
        await proxy.stop()
