"""The delivery queue's scripts against a Redis of this module's own (no worker reads it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from aicq.webhooks.parking import Parking
from aicq.webhooks.queue import (
    BORN,
    ENQUEUE_LUA,
    MAX_QUEUED,
    PARKED_SET,
    RETRY,
    STREAM,
    DeliveryQueue,
    Entry,
    hold_key,
)
from tests.helpers import RedisProcess

ENQUEUE = ENQUEUE_LUA + "enqueue(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
EVENT = b'{"type":"message","room":"r1","msg":{"id":"01J","from":"author","body":"hi","ts":1700}}'


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = RedisProcess(Path(tmp_path_factory.mktemp("queue-redis"))).start()
    yield server.url
    server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


async def enqueue(redis: aioredis.Redis, target: str, skip: str = "") -> None:
    await redis.eval(ENQUEUE, 0, target, EVENT, "1700", skip)


async def dm_deliveries(redis: aioredis.Redis, queue: DeliveryQueue, count: int) -> list[Entry]:
    """``count`` DMs to alice, whose webhook w1 wants them: their deliveries, read."""
    await queue.ensure_group()
    await redis.sadd("webhooks:to:dm:alice", "w1|alice")
    for _ in range(count):
        await enqueue(redis, "dm:alice")
    for event in await queue.read(10, 100):
        await queue.expand(event)
    return await queue.read(10, 100)


async def test_an_event_is_queued_once_and_expanded_per_webhook(redis: aioredis.Redis) -> None:
    queue = DeliveryQueue(redis, "me")
    await queue.ensure_group()
    await enqueue(redis, "room:r1", skip="author")
    assert await redis.xlen(STREAM) == 0  # nobody listens: nothing queued
    await redis.sadd("webhooks:to:room:r1", "w1|alice", "w2|bob", "w3|author")
    await enqueue(redis, "room:r1", skip="author")
    assert await redis.xlen(STREAM) == 1  # one entry per event, however many webhooks

    [event] = await queue.read(10, 100)
    assert not event.expanded
    assert await queue.expand(event) == 2  # the author's own webhook skipped
    assert await queue.expand(event) == -1  # expanding twice does nothing
    deliveries = await queue.read(10, 100)
    assert sorted(d.webhook_id for d in deliveries) == ["w1", "w2"]
    assert all(d.event == EVENT and d.born_ms == 1700 and d.attempts == 0 for d in deliveries)
    assert sorted(d.delivery_id.rpartition(".")[0] for d in deliveries) == [event.entry_id] * 2
    assert len({d.delivery_id for d in deliveries}) == 2
    for delivery in deliveries:
        assert await queue.finish(delivery)
        assert not await queue.finish(delivery)  # acked once
    assert await redis.xlen(STREAM) == 0


async def test_failures_hold_the_endpoint_and_back_off_per_round(redis: aioredis.Redis) -> None:
    queue, parking = DeliveryQueue(redis, "me"), Parking(redis)
    first, second, third = await dm_deliveries(redis, queue, 3)
    window = dict(base_ms=1000, deadline_ms=10**13, window_ms=86_400_000)

    due = await queue.failed(first, 1, **window)
    held = await parking.held_until("w1")
    assert due == held and 750 <= held - _now() <= 1000
    # The same round: not a second probe, but the backlog, until the endpoint is tried next.
    assert await queue.failed(second, 1, **window) == due
    assert await redis.zcard(RETRY) == 1 and (await queue.depth()).parked == 1
    await redis.set(hold_key("w1"), 1, px=1)  # the hold is over
    await asyncio.sleep(0.01)
    again = await queue.failed(third, 1, **window)
    assert 1500 <= again - _now() <= 2000  # second round: twice as long
    assert await redis.zcard(RETRY) == 2 and await redis.zcard(BORN) == 3

    # Due probes go back into the stream with their delivery id and attempts.
    assert await queue.move_due() == 0
    await redis.zadd(RETRY, {m: 0 for m in await redis.zrange(RETRY, 0, -1)})
    assert await queue.move_due() == 2
    probes = await queue.read(10, 100)
    assert {r.delivery_id for r in probes} == {first.delivery_id, third.delivery_id}
    assert {r.attempts for r in probes} == {1}
    # A success ends the hold and brings the backlog back.
    await parking.record("w1", {"outcome": "delivered"}, release=1)
    assert await parking.held_until("w1") is None and await parking.results(["w1"]) == {
        "w1": [{"outcome": "delivered"}]}
    [backlog] = await queue.read(10, 100)
    assert backlog.delivery_id == second.delivery_id and backlog.attempts == 1
    for entry in [*probes, backlog]:
        assert await queue.finish(entry)
    assert await redis.zcard(BORN) == 0

    # An event for an endpoint on hold is parked by its expansion: no worker sees it.
    await redis.set(hold_key("w1"), _now() + 60_000, px=60_000)
    await enqueue(redis, "dm:alice")
    [event] = await queue.read(10, 100)
    assert await queue.expand(event) == 1
    assert await redis.xlen(STREAM) == 0 and (await queue.depth()).parked == 1


async def test_a_dead_consumer_s_entries_are_claimed_and_a_deadline_caps_the_wait(redis: aioredis.Redis) -> None:
    dead, alive = DeliveryQueue(redis, "dead"), DeliveryQueue(redis, "alive")
    await dead.ensure_group()
    await redis.sadd("webhooks:to:dm:alice", "w1|alice")
    await enqueue(redis, "dm:alice")
    [event] = await dead.read(10, 100)  # read, never acked: its instance died
    assert await alive.claim_stale(60_000, 10) == []  # not stale yet
    await asyncio.sleep(0.05)
    [claimed] = await alive.claim_stale(20, 10)
    assert claimed.entry_id == event.entry_id and await alive.expand(claimed) == 1
    [delivery] = await alive.read(10, 100)
    assert await alive.failed(delivery, 1, base_ms=60_000, deadline_ms=_now() + 50, window_ms=1000) <= _now() + 50


async def test_a_full_queue_counts_what_it_refuses(redis: aioredis.Redis) -> None:
    full = ENQUEUE_LUA.replace(f">= {MAX_QUEUED}", ">= 1") + "enqueue(ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
    assert full != ENQUEUE_LUA
    await redis.sadd("webhooks:to:dm:alice", "w1|alice")
    for _ in range(3):
        await redis.eval(full, 0, "dm:alice", EVENT, "1700", "")
    assert await redis.xlen(STREAM) == 1 and int(await redis.get("webhooks:overflow")) == 2
    assert (await DeliveryQueue(redis, "me").depth()).overflow == 2


def _now() -> int:
    return int(time.time() * 1000)


async def test_parked_deliveries_wait_outside_the_stream_and_come_back_once(redis: aioredis.Redis) -> None:
    queue, parking = DeliveryQueue(redis, "me"), Parking(redis)
    deliveries = await dm_deliveries(redis, queue, 5)
    for delivery in deliveries:
        assert await parking.park(delivery)
        assert not await parking.park(delivery)  # acked once
    assert await redis.xlen(STREAM) == 0 and (await queue.depth()).parked == 5
    assert await parking.with_parked(10) == ["w1"] and await redis.zcard(BORN) == 5
    await enqueue(redis, "dm:alice")  # the endpoint has a backlog: a new delivery joins it at once
    [event] = await queue.read(10, 100)
    assert await queue.expand(event) == 1 and await redis.xlen(STREAM) == 0
    assert (await queue.depth()).parked == 6

    assert await parking.unpark("w1", 2) == 2
    back = await queue.read(10, 100)
    assert [b.delivery_id for b in back] == [d.delivery_id for d in deliveries[:2]]  # oldest first
    await parking.record("w1", {"outcome": "delivered"}, release=1)  # a success brings one more
    assert [b.delivery_id for b in await queue.read(10, 100)] == [deliveries[2].delivery_id]
    assert await parking.drop("w1") == 3  # the endpoint is gone: the rest with it
    assert (await queue.depth()).parked == 0 and not await redis.exists(PARKED_SET)
    assert await redis.zcard(BORN) == 3  # the three back in the stream are still pending
