"""SQL migrations in golang-migrate's layout and bookkeeping.

Files are ``migrations/NNNNNN_name.up.sql`` / ``.down.sql``; the applied version is
the single row of ``schema_migrations(version, dirty)``, exactly as golang-migrate
keeps it, so a database the Go server migrated is recognised as is. Each step runs
in one transaction under an advisory lock, so instances starting together all succeed.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from aicq.paths import MIGRATIONS_DIR

_FILE = re.compile(r"^(\d+)_(\w+)\.(up|down)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path | None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, dict[str, Path | str]] = {}
    for path in directory.iterdir():
        match = _FILE.match(path.name)
        if match:
            entry = found.setdefault(int(match[1]), {"name": match[2]})
            entry[match[3]] = path
    migrations = []
    for version, entry in sorted(found.items()):
        if "up" not in entry:
            raise MigrationError(f"migration {version} has no .up.sql file")
        migrations.append(Migration(version, str(entry["name"]), entry["up"], entry.get("down")))  # type: ignore[arg-type]
    return migrations


def advisory_lock_id(database: str, schema: str = "public") -> int:
    """golang-migrate's lock id for this database, so a Go instance and ours serialise too."""
    checksum = zlib.crc32(f"{schema}\x00{database}".encode())
    return (checksum * 1486364155) & 0xFFFFFFFF


_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
)


async def _current(conn: asyncpg.Connection) -> tuple[int | None, bool]:
    row = await conn.fetchrow("SELECT version, dirty FROM schema_migrations LIMIT 1")
    return (None, False) if row is None else (int(row["version"]), bool(row["dirty"]))


async def _set_version(conn: asyncpg.Connection, version: int | None) -> None:
    await conn.execute("DELETE FROM schema_migrations")
    if version is not None:
        await conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES ($1, false)", version)


class _Locked:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def __aenter__(self) -> asyncpg.Connection:
        database = await self.conn.fetchval("SELECT current_database()")
        self.lock = advisory_lock_id(database)
        await self.conn.execute("SELECT pg_advisory_lock($1)", self.lock)
        await self.conn.execute(_CREATE_TABLE)
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock($1)", self.lock)


async def up(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply every pending migration; returns the versions applied."""
    migrations = discover() if migrations is None else migrations
    applied = []
    async with _Locked(conn):
        current, dirty = await _current(conn)
        if dirty:
            raise MigrationError(f"database is dirty at version {current}; fix it, then force the version")
        for migration in migrations:
            if current is not None and migration.version <= current:
                continue
            async with conn.transaction():
                await conn.execute(migration.up.read_text())
                await _set_version(conn, migration.version)
            applied.append(migration.version)
    return applied


async def down(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> int | None:
    """Revert the newest applied migration; returns the version reverted, if any."""
    migrations = discover() if migrations is None else migrations
    async with _Locked(conn):
        current, dirty = await _current(conn)
        if current is None:
            return None
        if dirty:
            raise MigrationError(f"database is dirty at version {current}")
        by_version = {m.version: m for m in migrations}
        migration = by_version.get(current)
        if migration is None or migration.down is None:
            raise MigrationError(f"no down migration for version {current}")
        older = [v for v in by_version if v < current]
        async with conn.transaction():
            await conn.execute(migration.down.read_text())
            await _set_version(conn, max(older) if older else None)
        return current


async def status(conn: asyncpg.Connection) -> tuple[int | None, bool]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    return await _current(conn) if exists else (None, False)
