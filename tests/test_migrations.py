"""Migrations (SPEC §9): concurrent start, golang-migrate's table, the CLI, a Go-made schema."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from aicq import migrate
from tests.helpers import REPO

VERSIONS = [m.version for m in migrate.discover()]
LATEST = VERSIONS[-1]

# The Go service's 000001_init.up.sql, minus its CREATE EXTENSION (not shipped by the
# embedded PostgreSQL; gen_random_uuid() is built in since PostgreSQL 13).
GO_SCHEMA = """
CREATE TABLE agents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(), public_key TEXT NOT NULL UNIQUE,
    name TEXT, email TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE INDEX idx_agents_public_key ON agents(public_key);
CREATE INDEX idx_agents_created_at ON agents(created_at);
CREATE TABLE rooms (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(), name TEXT NOT NULL,
    is_private BOOLEAN NOT NULL DEFAULT FALSE, key_hash TEXT, created_by UUID REFERENCES agents(id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), last_active_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    message_count BIGINT NOT NULL DEFAULT 0);
CREATE INDEX idx_rooms_name ON rooms(name);
CREATE INDEX idx_rooms_last_active ON rooms(last_active_at);
CREATE INDEX idx_rooms_is_private ON rooms(is_private) WHERE is_private = FALSE;
INSERT INTO rooms (id, name, is_private) VALUES ('00000000-0000-0000-0000-000000000001', 'global', FALSE);
CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
INSERT INTO schema_migrations VALUES (1, false);
INSERT INTO agents (id, public_key, name) VALUES
    ('11111111-1111-4111-8111-111111111111', 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', 'go-agent');
"""


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def empty_database(stores: tuple[str, str]) -> Iterator[str]:
    admin = stores[0]
    name = f"aicq_mig_{secrets.token_hex(5)}"
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(admin)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_two_servers_starting_together_on_an_empty_database(start_server, empty_database: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: start_server(DATABASE_URL=empty_database), range(2)))
    for server in servers:
        assert httpx.get(f"{server.url}/health").json()["status"] == "healthy"
        assert httpx.get(f"{server.url}/room/global").status_code == 200
        server.stop()

    async def check() -> tuple:
        conn = await asyncpg.connect(empty_database)
        try:
            return tuple(await conn.fetch("SELECT version, dirty FROM schema_migrations"))
        finally:
            await conn.close()

    rows = asyncio.run(check())
    assert [tuple(r) for r in rows] == [(LATEST, False)]


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "aicq", "migrate", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_migrate_cli_up_down_status(empty_database: str) -> None:
    assert "version: none" in _cli(empty_database, "status").stdout
    up = _cli(empty_database, "up")
    assert up.returncode == 0 and f"applied: {VERSIONS}" in up.stdout and f"version: {LATEST}" in up.stdout
    assert "no change" in _cli(empty_database, "up").stdout
    for version, then in zip(reversed(VERSIONS), [*reversed(VERSIONS[:-1]), "none"], strict=True):
        down = _cli(empty_database, "down")
        assert down.returncode == 0 and f"reverted: {version}" in down.stdout and f"version: {then}" in down.stdout
    assert _cli(empty_database, "up").returncode == 0


def test_go_migrated_database_is_accepted_as_is(start_server, empty_database: str) -> None:
    asyncio.run(_execute(empty_database, GO_SCHEMA))
    server = start_server(DATABASE_URL=empty_database)
    profile = httpx.get(f"{server.url}/who/11111111-1111-4111-8111-111111111111").json()
    assert profile["name"] == "go-agent"
    server.stop()
    assert f"version: {LATEST}" in _cli(empty_database, "status").stdout  # moved on from the Go version


def test_dirty_database_refuses_to_migrate(empty_database: str) -> None:
    asyncio.run(_execute(empty_database, GO_SCHEMA + "UPDATE schema_migrations SET dirty = true;"))
    result = _cli(empty_database, "up")
    assert result.returncode == 1 and "dirty" in result.stderr


def test_lock_id_matches_golang_migrate_shape() -> None:
    assert 0 <= migrate.advisory_lock_id("aicq") < 2**32
    assert migrate.advisory_lock_id("aicq") != migrate.advisory_lock_id("other")
