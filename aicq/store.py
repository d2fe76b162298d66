"""PostgreSQL: agents and rooms. All SQL lives here.

Agents and room identities never change once written, so both are cached in
bounded LRUs; that keeps auth and room resolution off the database on the hot
path, and lets streaming and posting ride out a short PostgreSQL outage. A room
that is not there is remembered briefly too (``MISSING_*_S``), so asking for the
same unknown id or name again and again does not reach the database each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from aicq import metrics
from aicq.cache import LRU
from aicq.errors import Unavailable
from aicq.models import Agent, Room

T = TypeVar("T")

CLOSE_TIMEOUT_S = 1.0  # at shutdown, for queries still running to end

# How long "no such room" is believed. An id nobody has created cannot appear (ids
# are random), so its answer keeps; a name can be created at any moment, on any
# instance: this one forgets the miss when it creates the room, another may keep
# answering 404 for this long.
MISSING_ID_S = 60.0
MISSING_NAME_S = 2.0


_AGENT_COLUMNS = "id::text AS id, public_key, name, email, created_at"
_ROOM_COLUMNS = "id::text AS id, name, is_private, key_hash"


def _agent(row: asyncpg.Record) -> Agent:
    return Agent(row["id"], row["public_key"], row["name"], row["email"], row["created_at"])


def _room(row: asyncpg.Record) -> Room:
    return Room(row["id"], row["name"], row["is_private"], row["key_hash"])


class Store:
    def __init__(self, pool: asyncpg.Pool, identity: str = "default"):
        self.pool = pool
        # Names this database among others sharing a Redis (see ChatService._count).
        self.identity = identity
        self._agents: LRU = LRU(50_000)
        self._rooms: LRU = LRU(20_000)
        self._room_names: LRU = LRU(20_000)
        self._missing: LRU = LRU(20_000)  # ("id" | "name", value) -> believed until (monotonic)

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> Store:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, command_timeout=5, timeout=5,
            # Connections opened for a burst go back after a minute idle: many
            # instances (workers, machines) share one PostgreSQL's max_connections.
            max_inactive_connection_lifetime=60
        )
        return cls(pool, hashlib.sha256(url.encode()).hexdigest()[:16])

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the pool once its connections are back (asyncpg would wait for ever);
        after ``timeout``, drop them, cutting off whatever still runs on one."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            self.pool.terminate()

    async def _run(self, query: Callable[[asyncpg.Connection], Awaitable[T]], *, idempotent: bool = True) -> T:
        """Run one query, timing it; a lost database becomes a clean 503.

        After PostgreSQL restarts, each pooled connection is dead until used once, and a
        query that meets one is retried once on a fresh connection. But asyncpg reports
        that ("connection was closed in the middle of operation") exactly as it reports
        a session the server ended mid-statement (a terminated backend, a fast
        shutdown), after which the statement may have committed. So only a query that
        may run twice is retried; a write that must not (``idempotent=False``) is an
        outage like the others.
        """
        started = time.perf_counter()
        try:
            for attempt in (1, 2):
                try:
                    async with self.pool.acquire(timeout=3) as conn:
                        return await query(conn)
                except asyncpg.ConnectionDoesNotExistError:
                    if attempt == 2 or not idempotent:
                        raise
            raise AssertionError("unreachable")
        except asyncpg.QueryCanceledError:
            raise  # a cancelled statement: the server is still there
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.OperatorInterventionError) as exc:
            # OperatorInterventionError (class 57) is "the server went away": 57P01 admin
            # shutdown (pg_ctl stop -m fast, pg_terminate_backend), 57P02 crash shutdown,
            # 57P03 cannot connect now, 57P04 database dropped, 57P05 idle-session timeout.
            raise Unavailable("database unavailable") from exc
        finally:
            metrics.POSTGRES_LATENCY.observe(time.perf_counter() - started)

    async def run(self, query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``_run`` for the stores of other tables (webhooks, server keys)."""
        return await self._run(query)

    async def ping(self) -> None:
        await self._run(lambda c: c.fetchval("SELECT 1"))

    # Agents

    async def register_agent(self, public_key: str, name: str | None, email: str | None) -> tuple[Agent, bool]:
        """Insert the agent, or return the one holding this key. True when created."""
        row = await self._run(
            lambda c: c.fetchrow(
                f"INSERT INTO agents (public_key, name, email) VALUES ($1, $2, $3) "
                f"ON CONFLICT (public_key) DO NOTHING RETURNING {_AGENT_COLUMNS}",
                public_key, name, email,
            )
        )
        if row is not None:
            return self._cache_agent(_agent(row)), True
        row = await self._run(
            lambda c: c.fetchrow(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE public_key = $1", public_key)
        )
        return self._cache_agent(_agent(row)), False

    async def get_agent(self, agent_id: str) -> Agent | None:
        cached = self._agents.get(agent_id)
        if cached is not None:
            return cached
        row = await self._run(
            lambda c: c.fetchrow(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = $1::uuid", agent_id)
        )
        return self._cache_agent(_agent(row)) if row else None

    async def agent_names(self, agent_ids: list[str]) -> dict[str, str | None]:
        names: dict[str, str | None] = {}
        missing = []
        for agent_id in agent_ids:
            agent = self._agents.get(agent_id)
            if agent is None:
                missing.append(agent_id)
            else:
                names[agent_id] = agent.name
        if missing:
            rows = await self._run(
                lambda c: c.fetch(
                    f"SELECT {_AGENT_COLUMNS} FROM agents WHERE id = ANY($1::uuid[])", missing
                )
            )
            for row in rows:
                names[self._cache_agent(_agent(row)).id] = row["name"]
        return names

    def cached_agent(self, agent_id: str) -> Agent | None:
        """The agent if this instance has it cached; never a query."""
        return self._agents.get(agent_id)

    async def mention_lookup(self, names: list[str], ids: list[str]) -> tuple[dict[str, str], set[str]]:
        """For ``@name`` and ``@<id>`` mentions, in one round trip: each name (lowercased)
        → the oldest agent holding it case-insensitively; and which ``ids`` are agents."""

        async def query(c: asyncpg.Connection) -> tuple[dict[str, str], set[str]]:
            named = await c.fetch(
                "SELECT DISTINCT ON (n.key) n.key, a.id::text AS id "
                "FROM unnest($1::text[]) AS n(key) JOIN agents a ON lower(a.name) = lower(n.key) "
                "ORDER BY n.key, a.created_at, a.id", names) if names else []
            found = await c.fetch(
                "SELECT id::text AS id FROM agents WHERE id = ANY($1::uuid[])", ids) if ids else []
            return {r["key"]: r["id"] for r in named}, {r["id"] for r in found}

        return await self._run(query)

    def _cache_agent(self, agent: Agent) -> Agent:
        self._agents.put(agent.id, agent)
        return agent

    # Rooms

    async def create_room(self, name: str, is_private: bool, key_hash: str | None, created_by: str) -> Room:
        row = await self._run(
            lambda c: c.fetchrow(
                f"INSERT INTO rooms (name, is_private, key_hash, created_by) "
                f"VALUES ($1, $2, $3, $4::uuid) RETURNING {_ROOM_COLUMNS}",
                name, is_private, key_hash, created_by,
            ),
            idempotent=False,  # a second run would make a second room
        )
        self._missing.pop(("name", name), None)
        return self._cache_room(_room(row))

    async def get_room(self, room_id: str) -> Room | None:
        cached = self._rooms.get(room_id)
        if cached is not None:
            return cached
        if self._known_missing("id", room_id):
            return None
        row = await self._run(
            lambda c: c.fetchrow(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE id = $1::uuid", room_id)
        )
        if row is None:
            self._missing.put(("id", room_id), time.monotonic() + MISSING_ID_S)
            return None
        return self._cache_room(_room(row))

    async def public_room_by_name(self, name: str) -> Room | None:
        """The oldest public room of this name (a newer namesake never shadows it)."""
        room_id = self._room_names.get(name)
        if room_id is not None:
            return await self.get_room(room_id)
        if self._known_missing("name", name):
            return None
        row = await self._run(
            lambda c: c.fetchrow(
                f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE name = $1 AND NOT is_private "
                f"ORDER BY created_at, id LIMIT 1",
                name,
            )
        )
        if row is None:
            self._missing.put(("name", name), time.monotonic() + MISSING_NAME_S)
            return None
        room = self._cache_room(_room(row))
        self._room_names.put(name, room.id)
        return room

    def _known_missing(self, kind: str, value: str) -> bool:
        until = self._missing.get((kind, value))
        if until is None:
            return False
        if until > time.monotonic():
            return True
        self._missing.pop((kind, value), None)
        return False

    def _cache_room(self, room: Room) -> Room:
        self._rooms.put(room.id, room)
        return room

    async def list_public_rooms(self, limit: int, offset: int) -> tuple[list[dict], int]:
        async def query(c: asyncpg.Connection) -> tuple[list[dict], int]:
            rows = await c.fetch(
                "SELECT id::text AS id, name, message_count, last_active_at FROM rooms "
                "WHERE NOT is_private ORDER BY last_active_at DESC, id LIMIT $1 OFFSET $2",
                limit, offset,
            )
            total = await c.fetchval("SELECT count(*) FROM rooms WHERE NOT is_private")
            return [dict(r) for r in rows], int(total)

        return await self._run(query)

    async def count_messages(self, counts: dict[str, int]) -> None:
        """Move rooms' message_count by ``counts`` (room id → delta) in one statement;
        a room that gained messages is marked active now."""
        rooms, deltas = list(counts), list(counts.values())
        await self._run(lambda c: c.execute(
            "UPDATE rooms SET message_count = GREATEST(rooms.message_count + v.delta, 0), "
            "last_active_at = CASE WHEN v.delta > 0 THEN now() ELSE rooms.last_active_at END "
            "FROM unnest($1::uuid[], $2::bigint[]) AS v(id, delta) WHERE rooms.id = v.id",
            rooms, deltas,
        ), idempotent=False)

    async def stats(self) -> dict[str, Any]:
        async def query(c: asyncpg.Connection) -> dict[str, Any]:
            agents = await c.fetchval("SELECT count(*) FROM agents")
            row = await c.fetchrow(
                "SELECT count(*) AS rooms, coalesce(sum(message_count), 0) AS messages, "
                "max(last_active_at) FILTER (WHERE message_count > 0) AS last_active "
                "FROM rooms WHERE NOT is_private"
            )
            top = await c.fetch(
                "SELECT id::text AS id, name, message_count FROM rooms WHERE NOT is_private "
                "ORDER BY message_count DESC, last_active_at DESC LIMIT 5"
            )
            return {
                "total_agents": int(agents),
                "total_channels": int(row["rooms"]),
                "total_messages": int(row["messages"]),
                "last_active": row["last_active"],
                "top_channels": [dict(r) for r in top],
            }

        return await self._run(query)

