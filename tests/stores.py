"""The stores a test run uses: the machine's (isolated per run) or embedded ones."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _admin(url: str, sql: str) -> None:
    """Run one statement from sync code, also when called inside a running loop.

    Async tests open stores of their own (`with test_stores()` inside the test), so
    the statement runs on a loop in a thread of its own, never on the caller's.
    """
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, _execute(url, sql)).result()


# Databases 0 and 1 are left to the servers that need one apart (see conftest); a
# test that opens stores of its own inside the run must not get, and then flush,
# the run's database.
_claimed_redis_databases: set[int] = set()


def _claim_redis_database() -> int:
    free = [db for db in range(2, 16) if db not in _claimed_redis_databases]
    db = secrets.choice(free)
    _claimed_redis_databases.add(db)
    return db


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def test_stores() -> Iterator[tuple[str, str]]:
    """(database_url, redis_url) for this run.

    With DATABASE_URL, a fresh database is created for the run and dropped after,
    so parallel runs never collide. With REDIS_URL, a random logical database is
    used and flushed after. Without them, embedded servers start in a temp dir.
    """
    from aicq.embedded import EmbeddedStores, silence_platformdirs_warning

    # A run stopped with SIGTERM (a CI timeout, `timeout ...`) must still stop the
    # servers it started: unwind instead of dying on the spot.
    def unwind(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    base_db, base_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    tmp = Path(tempfile.mkdtemp(prefix="aicq-test-stores-"))
    embedded = EmbeddedStores(tmp)
    silence_platformdirs_warning()
    database = f"aicq_test_{secrets.token_hex(6)}"
    try:
        if base_db:
            _admin(base_db, f'CREATE DATABASE "{database}"')
            database_url = _with_database(base_db, database)
        else:
            database_url = embedded.start_postgres()
        if base_redis:
            parts = urlsplit(base_redis)
            redis_db = _claim_redis_database()
            redis_url = urlunsplit(parts._replace(path=f"/{redis_db}"))
        else:
            redis_url = embedded.start_redis()
        yield database_url, redis_url
    finally:
        if base_db:
            _admin(base_db, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if base_redis:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
            _claimed_redis_databases.discard(redis_db)
        embedded.stop()
        signal.signal(signal.SIGTERM, previous)
