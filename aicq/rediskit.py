"""The Redis connection: one client per process, every command timed, outages mapped to 503."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aicq import metrics
from aicq.errors import Unavailable

T = TypeVar("T")

_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(url: str, *, retries: int = 1) -> aioredis.Redis:
    """A pooled client. A command whose connection broke is retried once, on a fresh
    one: after Redis restarts, every pooled connection is dead once, and that must not
    cost a request. (Our multi-step scripts are idempotent under such a retry.)

    ``retries=0`` for a connection that must *see* every break: redis-py would
    otherwise reconnect a pub/sub connection and re-subscribe it silently, and
    whatever was published in between would be lost without anyone knowing."""
    return aioredis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=1,
        health_check_interval=15,
        max_connections=200,
        decode_responses=False,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries=retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def timed(call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    except _OUTAGE as exc:
        raise Unavailable("message store unavailable") from exc
    finally:
        metrics.REDIS_LATENCY.observe(time.perf_counter() - started)
