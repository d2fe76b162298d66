"""The hot path's Redis: one pipelined connection per process for the scripts every
request runs (its admission, a post's append, a DM, a page of history).

redis-py's asyncio client spends ~55 µs of CPU on each command (pool checkout, retry
wrapper, two timeouts, a stream writer), more than the rest of a request; measured
here, a command pipelined on a plain asyncio protocol costs 7-14 µs. So these
scripts take a lane of their own: every caller's command is written at once on one
connection, Redis answers in order, and each reply (parsed by hiredis) goes to the
caller that waits for it. Everything else keeps redis-py.

It keeps rediskit's rules: a caller's wait is bounded by ``rediskit.timed`` (a reply
that comes after its caller gave up is dropped, and the ones behind it still reach
theirs); a command whose connection broke is retried once on a fresh connection, which
the scripts make safe (their tokens, see rediskit); errors are redis-py's exceptions,
so outages map to 503 the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

CONNECT_TIMEOUT_S = 1.0
# A connection whose callers gave up waiting and that has said nothing for this long is
# replaced: Redis may only be slow (its replies would still come), but a partition
# keeps a dead connection open for as long as TCP takes to notice, minutes.
STALL_S = 2.0
RETRY_BACKOFF_S = (0.02, 0.25)  # the pause before the one retry: jittered, at most this


def _encoded(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def packed(args: Sequence[Any]) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encoded(arg)
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, replies matched in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._waiting: deque[asyncio.Future] = deque()
        self._transport: asyncio.Transport | None = None
        self._silent_since: float | None = None  # since a caller gave up, with nothing heard
        self.lost: RedisConnectionError | None = None

    @property
    def usable(self) -> bool:
        silent = self._silent_since
        return self.lost is None and (silent is None or time.monotonic() - silent < STALL_S)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._silent_since = None
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiting.popleft()
            if not waiter.done():  # its caller may have given up (a timeout)
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"Redis connection lost: {exc or 'closed by the server'}")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    async def call(self, command: bytes) -> Any:
        if self.lost is not None:
            raise self.lost
        assert self._transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._transport.write(command)
        try:
            reply = await waiter
        except asyncio.CancelledError:  # the caller's time ran out: is Redis still there?
            if self._silent_since is None:
                self._silent_since = time.monotonic()
            raise
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        if self.lost is None:
            self.lost = RedisConnectionError("Redis connection closed: it stopped answering")
        if self._transport is not None:
            # Commands still buffered here belong to callers who were answered 503 long
            # ago: dropped, never sent to a Redis that wakes up.
            self._transport.abort()


class Lane:
    """The pipelined connection to the Redis at ``url`` (redis://, rediss://, unix://),
    opened on first use and again after it breaks."""

    def __init__(self, url: str):
        self._options = parse_url(url)
        self._tls = url.startswith("rediss://")
        self._connection: _Connection | None = None
        self._opening: asyncio.Lock | None = None

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *args: Any) -> Any:
        """Run one command; retried once if its connection breaks (see the module)."""
        command = packed(args)
        try:
            return await (await self._connected()).call(command)
        except RedisConnectionError:
            await asyncio.sleep(random.uniform(*RETRY_BACKOFF_S))
            return await (await self._connected()).call(command)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # one caller opens it; the others wait for that one
            connection = self._connection
            if connection is None or not connection.usable:
                if connection is not None:
                    connection.close()
                self._connection = connection = await self._open()
        return connection

    async def _open(self) -> _Connection:
        loop, options = asyncio.get_running_loop(), self._options
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if "path" in options:
                    _, connection = await loop.create_unix_connection(_Connection, options["path"])
                else:
                    _, connection = await loop.create_connection(
                        _Connection, options.get("host", "localhost"), options.get("port", 6379),
                        ssl=True if self._tls else None)
                if options.get("password"):
                    credentials = [options["username"]] if options.get("username") else []
                    await connection.call(packed(["AUTH", *credentials, options["password"]]))
                if options.get("db"):
                    await connection.call(packed(["SELECT", options["db"]]))
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return connection


class Script:
    """A Lua script run by its SHA1, sent whole once when Redis does not know it (a new or
    restarted Redis). Called like redis-py's: ``await script(keys=[...], args=[...])``."""

    def __init__(self, lane: Lane, source: str):
        self._lane = lane
        self._source = source.encode()
        self._sha = hashlib.sha1(self._source).hexdigest().encode()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._lane.execute(b"EVALSHA", self._sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._lane.execute(b"EVAL", self._source, len(keys), *keys, *args)
