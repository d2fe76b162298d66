"""The stores a test run uses: the machine's (isolated per run) or embedded ones."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


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
            asyncio.run(_admin(base_db, f'CREATE DATABASE "{database}"'))
            database_url = _with_database(base_db, database)
        else:
            database_url = embedded.start_postgres()
        if base_redis:
            parts = urlsplit(base_redis)
            redis_url = urlunsplit(parts._replace(path=f"/{secrets.randbelow(15) + 1}"))
        else:
            redis_url = embedded.start_redis()
        yield database_url, redis_url
    finally:
        if base_db:
            asyncio.run(_admin(base_db, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if base_redis:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        embedded.stop()
        signal.signal(signal.SIGTERM, previous)
