"""ChatService: the one place where the rules live.

REST handlers and WebSocket sessions both call these methods; this is the only
module that coordinates the store (PostgreSQL), history (Redis), limits and the
publication of events. A method returns plain data or raises an AICQError.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bcrypt
from ulid import ULID

from aicq import __version__, metrics, protocol, validation
from aicq.auth import Authenticator, Credentials
from aicq.errors import Forbidden, NotFound, Unauthorized, Unavailable, Unprocessable
from aicq.history import History
from aicq.limits import Limiter, Quota
from aicq.models import Agent, DirectMessage, Message, Room, spliced
from aicq.settings import Settings
from aicq.store import LRU, Store, rfc3339

log = logging.getLogger("aicq.service")

BCRYPT_ROUNDS = 10
REPLAY_PAGE = 500


@dataclass(slots=True)
class Caller:
    """Who is asking: their IP, the agent once authenticated, the quota last charged."""

    ip: str
    whitelisted: bool = False
    agent: Agent | None = None
    quota: Quota | None = field(default=None, compare=False)

    def require_agent(self) -> Agent:
        if self.agent is None:
            raise Unauthorized("authentication required")
        return self.agent


class ChatService:
    def __init__(self, settings: Settings, store: Store, history: History, limiter: Limiter):
        self.settings = settings
        self.store = store
        self.history = history
        self.limiter = limiter
        self.auth = Authenticator(store.get_agent, history.claim_nonce)
        # A verified (room, key) pair stays verified: keys cannot change, bcrypt is slow.
        self._verified_keys: LRU = LRU(10_000)

    # Callers and limits

    def caller(self, ip: str) -> Caller:
        return Caller(ip=ip, whitelisted=self.settings.is_whitelisted(ip))

    async def authenticate(self, caller: Caller, creds: Credentials, body: bytes) -> Agent:
        caller.agent = await self.auth.verify(creds, body)
        return caller.agent

    async def ensure_not_blocked(self, caller: Caller) -> None:
        if not caller.whitelisted:
            await self.limiter.ensure_not_blocked(caller.ip)

    async def _charge(self, caller: Caller, limit: str) -> None:
        if caller.whitelisted:  # counted nowhere, but told the budget like everyone else
            caller.quota = self.limiter.untouched(limit)
            return
        agent_id = caller.agent.id if caller.agent else None
        caller.quota = await self.limiter.hit(limit, ip=caller.ip, agent_id=agent_id)

    # Agents

    async def register(self, caller: Caller, data: dict[str, Any]) -> tuple[dict, bool]:
        await self._charge(caller, "register")
        key = validation.public_key(data.get("public_key"))
        name = validation.agent_name(data.get("name"))
        email = validation.email(data.get("email"))
        agent, created = await self.store.register_agent(key, name, email)
        if created:
            metrics.AGENTS_REGISTERED.inc()
        return {"id": agent.id, "profile_url": f"/who/{agent.id}"}, created

    async def who(self, caller: Caller, agent_id: str) -> dict:
        await self._charge(caller, "who")
        agent = await self.store.get_agent(validation.parse_uuid(agent_id, "agent id"))
        if agent is None:
            raise NotFound("agent not found")
        profile: dict[str, Any] = {"id": agent.id}
        if agent.name:
            profile["name"] = agent.name
        if agent.email:
            profile["email"] = agent.email
        profile["public_key"] = agent.public_key
        profile["joined_at"] = rfc3339(agent.created_at)
        return profile

    # Rooms

    async def channels(self, caller: Caller, limit: int, offset: int) -> dict:
        await self._charge(caller, "channels")
        rows, total = await self.store.list_public_rooms(limit, offset)
        return {
            "channels": [
                {"id": r["id"], "name": r["name"], "message_count": r["message_count"],
                 "last_active": rfc3339(r["last_active_at"])}
                for r in rows
            ],
            "total": total,
        }

    async def create_room(self, caller: Caller, data: dict[str, Any]) -> dict:
        agent = caller.require_agent()
        await self._charge(caller, "create_room")
        name = validation.room_name(data.get("name"))
        key = validation.room_key(data.get("is_private", False), data.get("key"))
        key_hash = None
        if key is not None:
            hashed = await asyncio.to_thread(bcrypt.hashpw, key.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
            key_hash = hashed.decode()
        room = await self.store.create_room(name, key is not None, key_hash, agent.id)
        return {"id": room.id, "name": room.name, "is_private": room.is_private}

    async def room(self, ref: str, key: str | None) -> Room:
        """Resolve a room UUID or public name, checking a private room's key (403)."""
        room = await self.resolve_room(ref)
        if room.is_private:
            await self._check_key(room, key)
        return room

    async def resolve_room(self, ref: str) -> Room:
        """A room by UUID or public name, without checking any key."""
        room = None
        if validation.is_uuid(ref):
            room = await self.store.get_room(validation.parse_uuid(ref))
        elif validation.looks_like_room_name(ref):
            room = await self.store.public_room_by_name(ref)
        if room is None:
            raise NotFound("room not found")
        return room

    async def _check_key(self, room: Room, key: str | None) -> None:
        if not key or not isinstance(key, str) or len(key.encode()) > validation.MAX_ROOM_KEY_BYTES:
            raise Forbidden("this room is private: X-AICQ-Room-Key required")
        fingerprint = (room.id, hashlib.sha256(key.encode()).digest())
        if self._verified_keys.get(fingerprint):
            return
        assert room.key_hash, "private rooms always have a key hash"
        if not await asyncio.to_thread(bcrypt.checkpw, key.encode(), room.key_hash.encode()):
            raise Forbidden("invalid room key")
        self._verified_keys.put(fingerprint, True)

    async def read_room(self, caller: Caller, ref: str, key: str | None, limit: int, before: Any) -> dict:
        await self._charge(caller, "read_room")
        cursor = validation.cursor(before, "before")
        room = await self.room(ref, key)
        page = await self.history.before(room.id, cursor, limit)
        return {
            "room": {"id": room.id, "name": room.name},
            "messages": [m.to_public() for m in page.messages],
            "has_more": page.has_more,
        }

    async def post_message(self, caller: Caller, ref: str, data: dict[str, Any], key: str | None) -> dict:
        agent = caller.require_agent()
        await self._charge(caller, "post_message")
        room = await self.room(ref, key)
        body = validation.message_body(data.get("body"))
        pid = validation.parent_id(data.get("pid"))
        if pid is not None and await self.history.find(room.id, pid) is None:
            raise Unprocessable("pid must be the id of a message in this room")
        if not caller.whitelisted:
            await self.limiter.spend_bytes(ip=caller.ip, agent_id=agent.id, size=len(body.encode()))
        draft = Message.draft(room.id, agent.id, body, pid)
        public = not room.is_private
        words = validation.tokenize(body) if public else []
        frame = spliced(protocol.message_event_data(draft))
        message = await self.history.append(draft, public=public, words=words, frame=frame)
        metrics.MESSAGES_POSTED.labels(room_type="private" if room.is_private else "public").inc()
        await self._count(room.id, +1)
        return {"id": message.id, "ts": message.ts}

    async def _count(self, room_id: str, delta: int) -> None:
        # The message is stored and published by now: a PostgreSQL outage must not turn
        # an accepted post into an error. The change waits in Redis until it is back.
        try:
            await self.store.count_message(room_id, delta)
        except Unavailable:
            log.warning("database unavailable: message_count change parked", extra={"room": room_id})
            try:
                await self.history.park_count(self.store.identity, room_id, delta)
            except Unavailable:
                log.error("message_count change lost: PostgreSQL and Redis both unavailable",
                          extra={"room": room_id})

    async def apply_parked_counts(self) -> int:
        """Move parked message_count changes into PostgreSQL; returns how many rooms."""
        parked = await self.history.take_parked_counts(self.store.identity)
        for index, (room_id, delta) in enumerate(parked.items()):
            try:
                await self.store.count_message(room_id, delta)
            except Unavailable:
                for rest_room, rest_delta in list(parked.items())[index:]:
                    await self.history.park_count(self.store.identity, rest_room, rest_delta)
                raise
        return len(parked)

    async def reconcile_forever(self, every: float = 2.0) -> None:
        """Background task: apply parked counter changes as soon as both stores answer."""
        while True:
            await asyncio.sleep(every)
            try:
                if applied := await self.apply_parked_counts():
                    log.info("applied parked message_count changes for %d rooms", applied)
            except Unavailable:
                pass  # a store is still away; the next round tries again
            except Exception:
                log.exception("reconciling message counts failed")

    async def delete_message(self, caller: Caller, ref: str, message_id: str) -> None:
        agent = caller.require_agent()
        await self._charge(caller, "delete_message")
        # Deleting needs no room key: authorship is the permission that matters.
        room = await self.resolve_room(ref)
        message_id = validation.message_id(message_id)
        message = await self.history.find(room.id, message_id)
        if message is None:
            raise NotFound("message not found")
        if message.sender != agent.id and agent.id != self.settings.admin_agent_id:
            raise Forbidden("only the author or an admin can delete this message")
        words = validation.tokenize(message.body) if not room.is_private else []
        removed = await self.history.delete(
            room.id, message_id, words=words, frame=protocol.deleted_event(room.id, message_id)
        )
        if removed is None:
            raise NotFound("message not found")
        await self._count(room.id, -1)

    # Direct messages

    async def send_dm(self, caller: Caller, recipient_id: str, data: dict[str, Any]) -> dict:
        agent = caller.require_agent()
        await self._charge(caller, "send_dm")
        recipient = await self.store.get_agent(validation.parse_uuid(recipient_id, "recipient id"))
        body = validation.dm_body(data.get("body"))
        if recipient is None:
            raise NotFound("recipient not found")
        ulid = ULID()
        dm = DirectMessage(str(ulid), agent.id, recipient.id, body, ulid.milliseconds)
        await self.history.add_dm(dm, protocol.dm_event(dm))
        metrics.DMS_SENT.inc()
        return {"id": dm.id, "ts": dm.ts}

    async def read_dms(self, caller: Caller, limit: int) -> dict:
        agent = caller.require_agent()
        await self._charge(caller, "read_dms")
        return {"messages": [dm.to_public() for dm in await self.history.dms(agent.id, limit)]}

    # Search and stats

    async def search(self, caller: Caller, q: Any, room_ref: str | None, after: int | None, limit: int) -> dict:
        await self._charge(caller, "search")
        tokens = validation.query_tokens(q)
        room_id = None
        if room_ref:
            room = await self.room(room_ref, None)  # a private room answers 403 here
            room_id = room.id
        metrics.SEARCH_QUERIES.inc()
        hits = await self.history.search(tokens, room_id=room_id, after=after, limit=limit) if tokens else []
        results = []
        for message in hits:
            room = await self.store.get_room(message.room_id)
            if room is None or room.is_private:
                continue  # the Go server indexed private rooms; never show them
            results.append({"id": message.id, "room_id": room.id, "room_name": room.name,
                            "from": message.sender, "body": message.body, "ts": message.ts})
        return {"query": q, "results": results, "total": len(results)}

    async def stats(self) -> dict:
        figures = await self.store.stats()
        recent = await self.history.recent()
        public_recent = []
        for message in recent:
            room = await self.store.get_room(message.room_id)
            if room is not None and not room.is_private:
                public_recent.append(message)
            if len(public_recent) == 10:
                break
        names = await self.store.agent_names(list({m.sender for m in public_recent}))
        last = figures.pop("last_active")
        return {
            **{k: figures[k] for k in ("total_agents", "total_channels", "total_messages")},
            "last_activity": _ago(last) if last else "no activity yet",
            "top_channels": figures["top_channels"],
            "recent_messages": [
                {"id": m.id, "agent_id": m.sender, "agent_name": names.get(m.sender) or "Unknown Agent",
                 "body": m.body[:200], "timestamp": m.ts}
                for m in public_recent
            ],
        }

    async def health(self) -> tuple[dict, bool]:
        async def check(probe: Any) -> dict:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(probe(), timeout=2)
            except Exception as exc:  # any failure is the answer, not an error
                return {"status": "fail", "latency": _ms(started), "error": type(exc).__name__}
            return {"status": "pass", "latency": _ms(started)}

        postgres, redis = await asyncio.gather(check(self.store.ping), check(self.history.ping))
        healthy = postgres["status"] == redis["status"] == "pass"
        return {
            "status": "healthy" if healthy else "degraded",
            "version": __version__,
            "region": self.settings.region,
            "instance": self.settings.instance,
            "checks": {"postgres": postgres, "redis": redis},
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }, healthy

    # Realtime reads (the session calls these; the hub delivers live events)

    async def charge_replay(self, caller: Caller) -> None:
        """A WebSocket subscribe that replays history costs what a GET /room costs.

        A subscribe without ``since`` reads nothing, so it is free: a viewer watching
        many rooms must not exhaust, and then be blocked by, the history budget.
        """
        await self._charge(caller, "read_room")

    async def replay(self, room: Room, cursor: int | str) -> AsyncIterator[tuple[list[Message], bool]]:
        """Pages of every retained message after ``cursor``, oldest first.

        Each page comes with ``recovered``: False when the cursor is older than the
        retention window, so messages after it may have expired unseen.
        """
        cursor_ms = cursor if isinstance(cursor, int) else validation.ulid_ms(cursor)
        recovered = cursor_ms >= self.history.cutoff()
        while True:
            page = await self.history.after(room.id, cursor, REPLAY_PAGE)
            yield page, recovered
            if len(page) < REPLAY_PAGE:
                return
            cursor = page[-1].id


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.2f}ms"


def _ago(moment: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"

