"""PostgreSQL: the webhooks table (migrations/000002_webhooks.up.sql). Its SQL lives here.

Queries go through the main store's ``_run``, so they are timed and a lost database
is a clean 503 like every other query.
"""

from __future__ import annotations

import time
from datetime import datetime

import asyncpg

from aicq.cache import LRU
from aicq.errors import Conflict, Unprocessable
from aicq.store import Store
from aicq.webhooks.model import MAX_WEBHOOKS_PER_AGENT, Webhook

# Deliveries look their webhook up for every attempt; a few seconds of staleness across
# instances is what a deletion or a state change elsewhere may take to be seen.
CACHE_TTL_S = 5.0

_COLUMNS = ("id::text AS id, agent_id::text AS agent_id, url, events, created_at, failing_since, "
            "disabled_at, disabled_reason")


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(row["id"], row["agent_id"], row["url"], tuple(row["events"]), row["created_at"],
                   row["failing_since"], row["disabled_at"], row["disabled_reason"])


class WebhookStore:
    def __init__(self, store: Store):
        self.store = store
        self._cache: LRU = LRU(10_000)  # id -> (Webhook | None, expires at)

    async def add(self, agent_id: str, url: str, events: list[str]) -> Webhook:
        """Insert a webhook; 409 for a URL the agent registered already, 422 past the cap.

        The agent's row is locked for the count and the insert, so two concurrent
        registrations cannot both take the last place.
        """

        async def query(c: asyncpg.Connection) -> Webhook:
            async with c.transaction():
                await c.execute("SELECT 1 FROM agents WHERE id = $1::uuid FOR UPDATE", agent_id)
                count = await c.fetchval("SELECT count(*) FROM webhooks WHERE agent_id = $1::uuid", agent_id)
                if count >= MAX_WEBHOOKS_PER_AGENT:
                    raise Unprocessable(f"at most {MAX_WEBHOOKS_PER_AGENT} webhooks per agent; "
                                        "delete one first")
                row = await c.fetchrow(
                    f"INSERT INTO webhooks (agent_id, url, events) VALUES ($1::uuid, $2, $3) "
                    f"ON CONFLICT (agent_id, url) DO NOTHING RETURNING {_COLUMNS}",
                    agent_id, url, events)
                if row is None:
                    raise Conflict("this url is registered already; delete that webhook first")
                return _webhook(row)

        return await self.store.run(query)

    async def remove(self, webhook_id: str) -> None:
        self._cache.pop(webhook_id, None)
        await self.store.run(lambda c: c.execute("DELETE FROM webhooks WHERE id = $1::uuid", webhook_id))

    async def get(self, webhook_id: str, *, cached: bool = False) -> Webhook | None:
        """The webhook, or None; ``cached``: as seen at most CACHE_TTL_S ago."""
        now = time.monotonic()
        entry = self._cache.get(webhook_id) if cached else None
        if entry is not None and entry[1] > now:
            return entry[0]
        row = await self.store.run(
            lambda c: c.fetchrow(f"SELECT {_COLUMNS} FROM webhooks WHERE id = $1::uuid", webhook_id))
        webhook = _webhook(row) if row else None
        self._cache.put(webhook_id, (webhook, now + CACHE_TTL_S))
        return webhook

    async def of_agent(self, agent_id: str) -> list[Webhook]:
        rows = await self.store.run(lambda c: c.fetch(
            f"SELECT {_COLUMNS} FROM webhooks WHERE agent_id = $1::uuid ORDER BY created_at, id", agent_id))
        return [_webhook(r) for r in rows]

    async def active(self) -> list[Webhook]:
        """Every enabled webhook (to rebuild Redis's target sets from)."""
        rows = await self.store.run(
            lambda c: c.fetch(f"SELECT {_COLUMNS} FROM webhooks WHERE disabled_at IS NULL"))
        return [_webhook(r) for r in rows]

    async def mark_failing(self, webhook_id: str, since_ms: int) -> datetime | None:
        """Failing since the event at ``since_ms``, unless it was failing already: returns
        since when it is (None: the webhook is gone)."""
        self._cache.pop(webhook_id, None)
        return await self.store.run(lambda c: c.fetchval(
            "UPDATE webhooks SET failing_since = coalesce(failing_since, to_timestamp($2::float8 / 1000)) "
            "WHERE id = $1::uuid RETURNING failing_since", webhook_id, since_ms))

    async def mark_healthy(self, webhook_id: str) -> None:
        self._cache.pop(webhook_id, None)
        await self.store.run(lambda c: c.execute(
            "UPDATE webhooks SET failing_since = NULL WHERE id = $1::uuid AND failing_since IS NOT NULL",
            webhook_id))

    async def disable(self, webhook_id: str, reason: str) -> bool:
        """Disable a webhook; False when it already was (or is gone)."""
        self._cache.pop(webhook_id, None)
        status = await self.store.run(lambda c: c.execute(
            "UPDATE webhooks SET disabled_at = now(), disabled_reason = $2 "
            "WHERE id = $1::uuid AND disabled_at IS NULL", webhook_id, reason))
        return status.endswith(" 1")
