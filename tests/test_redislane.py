"""The hot path's pipelined Redis connection (aicq/redislane.py), against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from aicq import redislane
from aicq.redislane import Lane
from tests.helpers import RedisProcess

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def lane(private_redis: RedisProcess) -> AsyncIterator[Lane]:
    lane = Lane(private_redis.url.replace("/0", "/2"))
    try:
        yield lane
    finally:
        await lane.close()


async def test_many_callers_share_the_connection_and_each_gets_its_own_reply(lane: Lane) -> None:
    script = lane.script(ECHO)
    replies = await asyncio.gather(*[script(keys=[f"k{i}"], args=[i]) for i in range(500)])
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]


async def test_it_selects_the_database_of_its_url(lane: Lane, private_redis: RedisProcess) -> None:
    await lane.execute("SET", "lane:db", "two")
    direct = aioredis.from_url(private_redis.url.replace("/0", "/2"))
    try:
        assert await direct.get("lane:db") == b"two"
    finally:
        await direct.aclose()


async def test_a_script_redis_forgot_is_sent_whole(lane: Lane) -> None:
    script = lane.script("return 'known'")
    assert await script() == b"known"
    await lane.execute("SCRIPT", "FLUSH")  # what a restarted Redis knows
    assert await script() == b"known"


async def test_errors_are_redis_py_s(lane: Lane) -> None:
    with pytest.raises(ResponseError, match="boom"):
        await lane.script("return redis.error_reply('boom')")()


async def test_a_reply_its_caller_gave_up_on_reaches_no_one_else(lane: Lane, private_redis: RedisProcess) -> None:
    script = lane.script(ECHO)
    await script(keys=["warm"], args=[0])
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await script(keys=["abandoned"], args=[1])
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    assert await script(keys=["next"], args=[2]) == [b"next", b"2"]


async def test_a_connection_silent_after_a_timeout_is_replaced(lane: Lane, private_redis: RedisProcess,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redislane, "STALL_S", 0.0)  # replaced at once, rather than after 2 s
    await lane.execute("PING")
    first = lane._connection
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await lane.execute("PING")
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    assert await lane.execute("PING") == b"PONG"
    assert lane._connection is not first


async def test_a_broken_connection_is_reopened_and_a_dead_redis_is_a_connection_error(
        private_redis: RedisProcess, tmp_path) -> None:
    other = RedisProcess(tmp_path).start()
    lane, direct = Lane(other.url), aioredis.from_url(other.url)
    try:
        assert await lane.execute("PING") == b"PONG"
        first = lane._connection
        assert await direct.client_kill_filter(_type="normal", skipme=True) >= 1  # the lane's among them
        assert await lane.execute("PING") == b"PONG"  # retried on a fresh one
        assert lane._connection is not first
        other.stop()
        with pytest.raises(RedisConnectionError):
            await lane.execute("PING")
    finally:
        await lane.close()
        await direct.aclose()
        other.stop()
