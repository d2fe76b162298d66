"""Register, list and delete webhooks; keep Redis's target sets in step with PostgreSQL.

PostgreSQL holds the webhooks; Redis holds, per event, the set of webhooks that want
it (model.py), which the storing scripts read. A registration writes the row, then
the sets (and takes the row back if Redis refuses); a deletion empties the sets
first, then drops the row. Whatever a failure leaves behind heals: every instance
rebuilds the sets from PostgreSQL at start and every ``SYNC_EVERY_S``, and the worker
unlists a member whose webhook is gone when it meets one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from aicq import validation
from aicq.errors import Forbidden, NotFound, Unavailable, Unprocessable
from aicq.models import rfc3339
from aicq.rediskit import timed
from aicq.server_key import ServerKey
from aicq.service import Caller, ChatService
from aicq.settings import Settings
from aicq.webhooks import destination
from aicq.webhooks.model import ROOM_PREFIX, Webhook, parse_events
from aicq.webhooks.parking import Parking
from aicq.webhooks.store import WebhookStore

log = logging.getLogger("aicq.webhooks")

SYNC_EVERY_S = 600.0


class Registry:
    def __init__(self, settings: Settings, store: WebhookStore, redis: aioredis.Redis, chat: ChatService,
                 key: ServerKey):
        self.settings = settings
        self.store = store
        self.redis = redis
        self.parking = Parking(redis)
        self.chat = chat
        self.key = key

    async def register(self, caller: Caller, url: object, events: object, room_key: str | None) -> dict[str, Any]:
        """A new webhook of the calling agent (201), its URL checked and its rooms readable."""
        agent = caller.require_agent()
        parsed = destination.parse_url(url, production=self.settings.production)
        wanted = [await self._event(e, caller, room_key) for e in parse_events(events)]
        try:
            await destination.resolve(parsed, allow_private=self.settings.webhook_allow_private)
        except destination.Refused as exc:
            raise Unprocessable(f"url refused: {exc}") from None
        webhook = await self.store.add(agent.id, str(parsed), list(dict.fromkeys(wanted)))
        try:
            await list_targets(self.redis, webhook)
        except Unavailable:
            await self.store.remove(webhook.id)
            raise
        return {**self.describe(webhook, []), "signing_key": self.key.public_key}

    async def _event(self, event: str, caller: Caller, room_key: str | None) -> str:
        """``room:<ref>`` → ``room:<uuid>`` of a room the agent can read (403 otherwise)."""
        if not event.startswith(ROOM_PREFIX):
            return event
        ref = event[len(ROOM_PREFIX):]
        room = await self.chat.resolve_room(ref)
        if room.is_private and not await self.chat.mentions.can_read(room.id, caller.require_agent().id):
            if room_key is None:
                raise Forbidden(f"room {ref} is private: read or post there with its key first, or send "
                                "the key in X-AICQ-Room-Key")
            await self.chat.room(room.id, room_key, caller)
        return ROOM_PREFIX + room.id

    async def list(self, caller: Caller) -> dict[str, Any]:
        agent = caller.require_agent()
        webhooks = await self.store.of_agent(agent.id)
        results = await self.parking.results([w.id for w in webhooks])
        return {"webhooks": [self.describe(w, results.get(w.id, [])) for w in webhooks],
                "signing_key": self.key.public_key}

    async def delete(self, caller: Caller, webhook_id: str) -> None:
        agent = caller.require_agent()
        webhook = await self.store.get(validation.parse_uuid(webhook_id, "webhook id"))
        if webhook is None or webhook.agent_id != agent.id:
            raise NotFound("webhook not found")
        await unlist_targets(self.redis, webhook)
        await self.parking.drop(webhook.id)
        await self.store.remove(webhook.id)

    def describe(self, webhook: Webhook, results: list[dict[str, Any]]) -> dict[str, Any]:
        status = "disabled" if webhook.disabled_at else ("failing" if webhook.failing_since else "active")
        out: dict[str, Any] = {"id": webhook.id, "url": webhook.url, "events": list(webhook.events),
                               "created_at": rfc3339(webhook.created_at), "status": status}
        if webhook.failing_since:
            out["failing_since"] = rfc3339(webhook.failing_since)
        if webhook.disabled_at:
            out["disabled_at"] = rfc3339(webhook.disabled_at)
            out["disabled_reason"] = webhook.disabled_reason
        out["recent_deliveries"] = results
        return out

    async def sync(self) -> int:
        """List every enabled webhook in its target sets again; returns how many."""
        webhooks = await self.store.active()
        for start in range(0, len(webhooks), 500):
            await list_targets(self.redis, *webhooks[start:start + 500])
        return len(webhooks)

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY_S)
            try:
                await self.sync()
            except Unavailable:
                pass  # a store is away; the next round tries again
            except Exception:
                log.exception("re-listing webhooks failed")


# Redis's target sets


async def list_targets(redis: aioredis.Redis, *webhooks: Webhook) -> None:
    pipe = redis.pipeline(transaction=False)
    for webhook in webhooks:
        for target in webhook.targets():
            pipe.sadd(target, webhook.member)
    await timed(pipe.execute())


async def unlist_targets(redis: aioredis.Redis, webhook: Webhook) -> None:
    pipe = redis.pipeline(transaction=False)
    for target in webhook.targets():
        pipe.srem(target, webhook.member)
    await timed(pipe.execute())
