"""The Redis connection: one client per process, every command timed, outages mapped to 503."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aicq import metrics
from aicq.errors import Unavailable

T = TypeVar("T")

_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(url: str) -> aioredis.Redis:
    return aioredis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=200,
        decode_responses=False,
    )


async def timed(call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    except _OUTAGE as exc:
        raise Unavailable("message store unavailable") from exc
    finally:
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
