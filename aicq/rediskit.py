"""The Redis connection: one client per process, every wait bounded, outages mapped to 503.

Redis that dies is the easy case: connections are refused or reset at once. Redis
that *hangs* (a slow command, a failover, a partition, a frozen process) keeps its
connections open and answers nothing. Three rules keep that from reaching clients:

- **Bounded waits.** Every command gives up after ``COMMAND_TIMEOUT_S``; and a
  request (an HTTP request, one WebSocket op) may wait on Redis for
  ``REQUEST_BUDGET_S`` *in all*, however many commands it makes (``budget()``). A
  request that meets a frozen Redis is a 503 within about a second.
- **Retry only what never ran.** A command whose connection was refused, reset or
  closed is retried once on a fresh connection: after Redis restarts, every pooled
  connection is dead once, and that must not cost a request. A command that *timed
  out* is never retried: it may have reached a Redis that is only slow, and would
  run twice once it wakes.
- **Writes are idempotent under that one retry.** A connection can also break after
  a command was sent, so every write carries a token chosen here, and its script
  answers a repeated token with the first answer instead of acting twice (appends,
  deletes, nonce claims, rate-limit windows, the byte budget, violations, parked
  counts).

A subscriber connection only reads, so a hang looks like silence: ``Liveness`` tells
a quiet connection from one whose Redis stopped answering.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from aicq import metrics
from aicq.errors import Unavailable

T = TypeVar("T")

COMMAND_TIMEOUT_S = 2.0
# All of a request's Redis waits together; /health answers within it too. Clients
# are promised an answer within 2 s while Redis hangs: this leaves the rest of the
# request (and the network) a wide margin.
REQUEST_BUDGET_S = 1.0
# Tokens that make a retried write a no-op live this long (a retry follows within ms).
TOKEN_TTL_S = 120

_OUTAGE = (RedisConnectionError, RedisTimeoutError, OSError)  # OSError covers TimeoutError


def connect(url: str, *, retries: int = 1) -> aioredis.Redis:
    """A pooled client whose retry policy is the one above: once, on connection errors only.

    ``retries=0`` for a connection that must *see* every break: redis-py would
    otherwise reconnect a pub/sub connection and re-subscribe it silently, and
    whatever was published in between would be lost without anyone knowing."""
    return aioredis.from_url(
        url,
        socket_timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=1,
        health_check_interval=15,
        max_connections=200,
        decode_responses=False,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries=retries,
                    supported_errors=(RedisConnectionError,)),
    )


def token() -> str:
    """A fresh token for one idempotent write."""
    return secrets.token_hex(10)


class Budget:
    """What is left of one request's time to wait on Redis."""

    __slots__ = ("remaining",)

    def __init__(self, seconds: float):
        self.remaining = seconds


_budget: ContextVar[Budget | None] = ContextVar("aicq_redis_budget", default=None)


@contextmanager
def budget(seconds: float = REQUEST_BUDGET_S) -> Iterator[Budget]:
    """Within this block, Redis commands may wait ``seconds`` in all (time spent
    elsewhere, reading a body or hashing a key, is not counted)."""
    current = Budget(seconds)
    reset = _budget.set(current)
    try:
        yield current
    finally:
        _budget.reset(reset)


def _limit(at_most: float) -> float:
    current = _budget.get()
    return at_most if current is None else min(at_most, current.remaining)


def _charge(started: float) -> float:
    elapsed = time.perf_counter() - started
    current = _budget.get()
    if current is not None:
        current.remaining -= elapsed
    return elapsed


async def within_budget(waiting: Awaitable[T], at_most: float) -> T:
    """Wait for something Redis must do (a subscription's confirmation, say) for at most
    ``at_most`` seconds and what is left of the budget; raises TimeoutError past that."""
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(waiting, max(0.0, _limit(at_most)))
    finally:
        _charge(started)


async def timed(call: Awaitable[T]) -> T:
    """Await one Redis call within the command timeout and the request's budget;
    any outage, hang included, becomes Unavailable (503)."""
    started = time.perf_counter()
    limit = _limit(COMMAND_TIMEOUT_S)
    try:
        if limit <= 0:
            if inspect.iscoroutine(call):
                call.close()
            raise TimeoutError("the request's Redis budget is spent")
        async with asyncio.timeout(limit):
            return await call
    except _OUTAGE as exc:
        raise Unavailable("message store unavailable") from exc
    finally:
        metrics.REDIS_LATENCY.observe(_charge(started))


class Liveness:
    """Tells a pub/sub connection that is quiet from one whose Redis stopped answering.

    A subscriber only reads, so when its Redis hangs the connection stays open and
    simply goes quiet, for as long as the hang lasts (forever, after a failover or a
    partition). After ``quiet_s`` without a word the owner pings; when nothing at all
    has come back ``answer_s`` after the ping, the connection is declared lost.
    """

    PING = b"aicq-liveness"

    def __init__(self, quiet_s: float = 2.0, answer_s: float = 5.0):
        self.quiet_s = quiet_s
        self.answer_s = answer_s
        self._heard = time.monotonic()
        self._pinged: float | None = None

    def heard(self) -> None:
        self._heard = time.monotonic()
        self._pinged = None

    async def check(self, pubsub: aioredis.client.PubSub) -> None:
        """Call when a read found nothing. Raises ConnectionError once Redis is silent."""
        now = time.monotonic()
        if self._pinged is None:
            if now - self._heard >= self.quiet_s:
                self._pinged = now
                await pubsub.ping(self.PING)  # its answer arrives as a "pong" message
        elif now - self._pinged >= self.answer_s:
            raise RedisConnectionError(f"Redis has not answered for {now - self._heard:.1f}s")
