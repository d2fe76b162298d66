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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import bcrypt
from ulid import ULID

from aicq import __version__, metrics, protocol, validation
from aicq.auth import Authenticator, Credentials
from aicq.cache import LRU
from aicq.errors import BadRequest, Forbidden, NotFound, Unauthorized, Unavailable, Unprocessable
from aicq.history import History
from aicq.limits import LIMITS, Limiter, Quota
from aicq.mentions import Mentions
from aicq.models import Agent, DirectMessage, Message, Room, rfc3339, spliced
from aicq.settings import Settings
from aicq.store import Store

log = logging.getLogger("aicq.service")

BCRYPT_ROUNDS = 10
REPLAY_PAGE = 200


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: their IP, and the agent once a signature proved who they are."""

    ip: str
    whitelisted: bool = False
    agent: Agent | None = None

    def signed_in(self, agent: Agent) -> Caller:
        return replace(self, agent=agent)

    def require_agent(self) -> Agent:
        if self.agent is None:
            raise Unauthorized("authentication required")
        return self.agent


@dataclass(frozen=True, slots=True)
class Posted:
    """A stored room message or DM: its id and its ts (unix ms)."""

    id: str
    ts: int


@dataclass(frozen=True, slots=True)
class Registered:
    id: str
    profile_url: str
    created: bool  # False: the key was registered already, this is its agent


class ChatService:
    def __init__(self, settings: Settings, store: Store, history: History, limiter: Limiter):
        self.settings = settings
        self.store = store
        self.history = history
        self.limiter = limiter
        self.auth = Authenticator(store.get_agent, history.claim_nonce)
        self.mentions = Mentions(store, history.redis)
        # A verified (room, key) pair stays verified: keys cannot change, bcrypt is slow.
        self._verified_keys: LRU = LRU(10_000)

    # Callers and limits

    def caller(self, ip: str) -> Caller:
        return Caller(ip=ip, whitelisted=self.settings.is_whitelisted(ip))

    async def authenticate(self, creds: Credentials, body: bytes) -> Agent:
        """The agent who signed ``body`` (401 otherwise); its nonce is spent."""
        return await self.auth.verify(creds, body)

    async def ensure_not_blocked(self, caller: Caller) -> None:
        if not caller.whitelisted:
            await self.limiter.ensure_not_blocked(caller.ip)

    async def admit(self, caller: Caller, action: str) -> Quota:
        """Spend one request of ``action``'s budget (SPEC §5); 429 when it is spent.

        Every transport admits an action before performing it, so a budget is the
        same whichever way the request came in. An agent-scoped action needs an
        authenticated caller (401 before anything is counted).
        """
        if LIMITS[action].scope == "agent":
            caller.require_agent()
        if caller.whitelisted:  # counted nowhere, but told the budget like everyone else
            return self.limiter.untouched(action)
        agent_id = caller.agent.id if caller.agent else None
        return await self.limiter.hit(action, ip=caller.ip, agent_id=agent_id)

    # Agents

    async def register(self, public_key: object, name: object, email: object) -> Registered:
        key = validation.public_key(public_key)
        agent, created = await self.store.register_agent(
            key, validation.agent_name(name), validation.email(email))
        if created:
            metrics.AGENTS_REGISTERED.inc()
            self.mentions.registered(agent.name)
        return Registered(agent.id, f"/who/{agent.id}", created)

    async def who(self, agent_id: str) -> dict[str, Any]:
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

    async def channels(self, limit: int, offset: int) -> dict[str, Any]:
        rows, total = await self.store.list_public_rooms(limit, offset)
        return {
            "channels": [
                {"id": r["id"], "name": r["name"], "message_count": r["message_count"],
                 "last_active": rfc3339(r["last_active_at"])}
                for r in rows
            ],
            "total": total,
        }

    async def create_room(self, caller: Caller, name: object, is_private: object, key: object) -> dict[str, Any]:
        agent = caller.require_agent()
        name = validation.room_name(name)
        key = validation.room_key(is_private, key)
        key_hash = None
        if key is not None:
            hashed = await asyncio.to_thread(bcrypt.hashpw, key.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
            key_hash = hashed.decode()
        room = await self.store.create_room(name, key is not None, key_hash, agent.id)
        if room.is_private:  # its creator holds the key: it may be mentioned there
            try:
                await self.mentions.note_reader(room.id, agent.id)
            except Unavailable:  # the room exists now; its first use of the key will note it
                log.warning("room creator not noted as a reader: Redis unavailable", extra={"room": room.id})
        return {"id": room.id, "name": room.name, "is_private": room.is_private}

    async def room(self, ref: str, key: str | None, reader: str | None = None) -> Room:
        """Resolve a room UUID or public name, checking a private room's key (403).

        ``reader``: the agent using the key, remembered as one that may be mentioned
        in the room (aicq/mentions.py).
        """
        room = await self.resolve_room(ref)
        if room.is_private:
            await self._check_key(room, key)
            if reader is not None:
                await self.mentions.note_reader(room.id, reader)
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

    async def read_room(self, ref: str, key: str | None, limit: int, before: int | str | None,
                        reader: str | None = None) -> dict[str, Any]:
        room = await self.room(ref, key, reader)
        page = await self.history.before(room.id, before, limit)
        return {
            "room": {"id": room.id, "name": room.name},
            "messages": [m.to_public() for m in page.messages],
            "has_more": page.has_more,
        }

    async def post_message(self, caller: Caller, ref: str, body: object, pid: object, key: str | None) -> Posted:
        agent = caller.require_agent()
        room = await self.room(ref, key, agent.id)
        body = validation.message_body(body)
        pid = validation.parent_id(pid)
        if pid is not None and await self.history.find(room.id, pid) is None:
            raise Unprocessable("pid must be the id of a message in this room")
        if not caller.whitelisted:
            await self.limiter.spend_bytes(ip=caller.ip, agent_id=agent.id, size=len(body.encode()))
        draft = Message.draft(room.id, agent.id, body, pid)
        public = not room.is_private
        words = validation.tokenize(body) if public else []
        frame = spliced(protocol.message_event_data(draft))
        mentioned = await self.mentions.resolve(body, agent.id)
        mention_frame = spliced(protocol.mention_event_data(draft)) if mentioned else (b"", b"", b"")
        message = await self.history.append(draft, public=public, words=words, frame=frame,
                                            mentioned=mentioned, mention_frame=mention_frame)
        metrics.MESSAGES_POSTED.labels(room_type="private" if room.is_private else "public").inc()
        await self._count(room.id, +1)
        return Posted(message.id, message.ts)

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
        await self.mentions.forget(removed)
        await self._count(room.id, -1)

    # Direct messages

    async def send_dm(self, caller: Caller, recipient_id: str, body: object) -> Posted:
        agent = caller.require_agent()
        recipient = await self.store.get_agent(validation.parse_uuid(recipient_id, "recipient id"))
        body = validation.dm_body(body)
        if recipient is None:
            raise NotFound("recipient not found")
        ulid = ULID()
        dm = DirectMessage(str(ulid), agent.id, recipient.id, body, ulid.milliseconds)
        await self.history.add_dm(dm, protocol.dm_event(dm))
        metrics.DMS_SENT.inc()
        return Posted(dm.id, dm.ts)

    async def read_dms(self, caller: Caller, limit: int) -> dict[str, Any]:
        agent = caller.require_agent()
        return {"messages": [dm.to_public() for dm in await self.history.dms(agent.id, limit)]}

    # Mentions

    async def read_mentions(self, caller: Caller, limit: int, after: int | str | None,
                            before: int | str | None) -> dict[str, Any]:
        """Room messages that mention the caller, newest first, between the cursors."""
        agent = caller.require_agent()
        messages, has_more = await self.mentions.feed(agent.id, limit, after, before)
        rooms = {room_id: await self.store.get_room(room_id) for room_id in {m.room_id for m in messages}}
        mentions = []
        for message in messages:
            room = rooms.get(message.room_id)
            mentions.append({"id": message.id, "room_id": message.room_id,
                             "room_name": room.name if room else None, **message.to_public()})
        return {"mentions": mentions, "has_more": has_more}

    # Search and stats

    async def search(self, q: str | None, room_ref: str | None, after: int | None, limit: int) -> dict[str, Any]:
        tokens = validation.query_tokens(q)
        room_id = None
        if room_ref:
            if not validation.looks_like_room_name(room_ref):  # a canonical UUID is one too
                raise BadRequest("room must be a room UUID or a public room's name")
            try:
                room = await self.resolve_room(room_ref)
            except NotFound:
                room = None
            if room is None or room.is_private:
                # As the Go server answered: nothing found. Saying "not found" or
                # "private" would tell a stranger which private rooms exist.
                tokens = []
            else:
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

    async def stats(self) -> dict[str, Any]:
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

    async def health(self) -> tuple[dict[str, Any], bool]:
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

    # Realtime reads (transports call these; the hub delivers live events)

    def recovered(self, cursor: int | str) -> bool:
        """False when ``cursor`` is older than what history still holds: messages
        after it may have expired unseen."""
        cursor_ms = cursor if isinstance(cursor, int) else validation.ulid_ms(cursor)
        return cursor_ms >= self.history.cutoff()

    def replay(self, room: Room, cursor: int | str) -> AsyncIterator[list[Message]]:
        """Pages of every retained message of ``room`` after ``cursor``, oldest first."""
        return self.history.pages_after(room.id, cursor, REPLAY_PAGE)


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.2f}ms"


def _ago(moment: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"

