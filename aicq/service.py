"""ChatService: the one place where the rules live.

REST handlers and WebSocket sessions both call these methods; this is the only
module that coordinates the store (PostgreSQL), history (Redis), limits and the
publication of events. A method returns plain data or raises an AICQError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from ulid import ULID

from aicq import __version__, metrics, protocol, validation
from aicq.auth import Authenticator, Credentials
from aicq.errors import (
    AICQError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from aicq.history import History
from aicq.limits import LIMITS, Admission, Limiter, Quota
from aicq.mentions import Mentions
from aicq.models import Agent, DirectMessage, Message, Room, rfc3339, spliced
from aicq.presence import Presence, Status
from aicq.roomkeys import RoomKeys
from aicq.settings import Settings
from aicq.store import Store

log = logging.getLogger("aicq.service")

REPLAY_PAGE = 200
# A replay is charged like the REST read it replaces: one read_room per this many
# messages actually sent (GET /room's largest page), nothing when nothing is sent.
MESSAGES_PER_READ = 200


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
    """A stored room message or DM: its id and its ts (unix ms); the budget left when
    the write passed its admission itself (``post_message``)."""

    id: str
    ts: int
    quota: Quota | None = None


@dataclass(frozen=True, slots=True)
class Registered:
    id: str
    profile_url: str
    created: bool  # False: the key was registered already, this is its agent


@dataclass(slots=True)
class ReplayAllowance:
    """Messages a connection has paid to replay and not replayed yet (see ``replay``)."""

    left: int = 0


class ChatService:
    def __init__(self, settings: Settings, store: Store, history: History, limiter: Limiter,
                 presence: Presence):
        self.settings = settings
        self.store = store
        self.history = history
        self.limiter = limiter
        self.presence = presence
        self.auth = Authenticator(store.get_agent)
        self.keys = RoomKeys(limiter)
        self.mentions = Mentions(store, history.redis)

    # Callers and limits

    def caller(self, ip: str) -> Caller:
        return Caller(ip=ip, whitelisted=self.settings.is_whitelisted(ip))

    async def verify(self, creds: Credentials, body: bytes) -> Agent:
        """The agent who signed ``body`` (401 otherwise). Its nonce is not spent yet:
        pass it in the request's admission."""
        return await self.auth.verify(creds, body)

    async def authenticate(self, creds: Credentials, body: bytes) -> Agent:
        """The agent who signed ``body`` (401 otherwise); its nonce is spent."""
        agent = await self.auth.verify(creds, body)
        await self.limiter.admit(Admission.nonce_only(agent.id, creds.nonce))
        return agent

    def admission(self, caller: Caller, action: str | None = None, *, nonce: str | None = None) -> Admission:
        """What ``caller`` must pass to perform ``action`` (SPEC §5): the address not
        blocked, ``nonce`` (a signed request's) unused, the action's budget not spent.

        Every transport admits an action before performing it, so a budget is the
        same whichever way the request came in. An agent-scoped action needs an
        authenticated caller (401 before anything is counted). A whitelisted caller is
        counted nowhere, and told the budget like everyone else.
        """
        limit = LIMITS[action] if action is not None else None
        if limit is not None and limit.scope == "agent":
            caller.require_agent()
        return Admission(ip=caller.ip, counted=not caller.whitelisted, limit=limit,
                         agent_id=caller.agent.id if caller.agent else None, nonce=nonce)

    async def settle(self, admission: Admission) -> Quota | None:
        """Pass ``admission``: the budget left (None without an action), or the refusal
        raised — 403 blocked, 401 nonce used, 429 budget spent."""
        return await self.limiter.admit(admission)

    @asynccontextmanager
    async def admitted_first(self, admission: Admission) -> AsyncIterator[None]:
        """Around what a self-admitting request does before its write: a refusal raised
        there passes ``admission`` first (the request is counted as any is, and a
        refusal of the admission's own is raised instead), with the budget left on the
        refusal's headers."""
        try:
            yield
        except AICQError as exc:
            quota = await self.settle(admission)
            if quota is not None:
                exc.headers = {**quota.headers(), **exc.headers}
            raise

    async def admit(self, caller: Caller, action: str) -> Quota:
        """Spend one request of ``action``'s budget (``admission``); 429 when it is spent."""
        quota = await self.settle(self.admission(caller, action))
        assert quota is not None
        return quota

    async def ensure_not_blocked(self, caller: Caller) -> None:
        await self.settle(self.admission(caller))

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
        present = await self._present([r["id"] for r in rows])
        return {
            "channels": [
                {"id": r["id"], "name": r["name"], "message_count": r["message_count"],
                 "last_active": rfc3339(r["last_active_at"]), **present.get(r["id"], {})}
                for r in rows
            ],
            "total": total,
        }

    async def _present(self, room_ids: list[str]) -> dict[str, dict[str, int]]:
        try:
            counts = await self.presence.counts(room_ids)
        except Unavailable:  # the list is PostgreSQL's; without Redis it comes without counts
            return {}
        return {room: {"present": agents, "readers": readers} for room, (agents, readers) in counts.items()}

    async def create_room(self, caller: Caller, name: object, is_private: object, key: object) -> dict[str, Any]:
        agent = caller.require_agent()
        name = validation.room_name(name)
        key = validation.room_key(is_private, key)
        key_hash = await self.keys.hash(key) if key is not None else None
        room = await self.store.create_room(name, key is not None, key_hash, agent.id)
        if room.is_private:  # its creator holds the key: it may be mentioned there
            try:
                await self.mentions.note_reader(room.id, agent.id)
            except Unavailable:  # the room exists now; its first use of the key will note it
                log.warning("room creator not noted as a reader: Redis unavailable", extra={"room": room.id})
        return {"id": room.id, "name": room.name, "is_private": room.is_private}

    async def room(self, ref: str, key: str | None, caller: Caller) -> Room:
        """Resolve a room UUID or public name, checking a private room's key (403).

        An agent whose key verifies is remembered as one that may be mentioned in the
        room (aicq/mentions.py).
        """
        room = await self.resolve_room(ref)
        if room.is_private:
            await self._check_key(room, key, caller)
            if caller.agent is not None:
                await self.mentions.note_reader(room.id, caller.agent.id)
        return room

    async def streamed_room(self, caller: Caller, ref: str, key: str | None = None, *, keyed: bool = True) -> Room:
        """``room`` (or, not ``keyed``, ``resolve_room``) for an op on a stream.

        A REST request pays a read before it looks anything up; a stream op (subscribe,
        unsubscribe) pays one only when the room it names does not exist, so trying
        random ids costs the same over every transport.
        """
        try:
            return await (self.room(ref, key, caller) if keyed else self.resolve_room(ref))
        except NotFound:
            await self.admit(caller, "read_room")
            raise

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

    async def _check_key(self, room: Room, key: str | None, caller: Caller) -> None:
        await self.keys.check(room, key, ip=caller.ip, whitelisted=caller.whitelisted)

    async def read_room(self, caller: Caller, ref: str, key: str | None, limit: int,
                        before: int | str | None, *, admission: Admission) -> tuple[dict[str, Any], Quota | None]:
        """A page of the room's history, and the budget left. ``admission`` (not passed
        yet) is passed by the read itself, in the same round trip (``post_message``
        says how a refusal before it is counted)."""
        async with self.admitted_first(admission):
            room = await self.room(ref, key, caller)
        read = await self.history.before(room.id, before, limit, admission=admission)
        quota = await self.limiter.conclude(admission, read.verdict)
        page = read.value
        assert page is not None  # conclude raised otherwise
        return {
            "room": {"id": room.id, "name": room.name},
            "messages": [orjson.Fragment(m) for m in page.messages],
            "has_more": page.has_more,
        }, quota

    async def post_message(self, caller: Caller, ref: str, body: object, pid: object, key: str | None,
                           *, admission: Admission) -> Posted:
        """Store and publish a message. ``admission`` (``self.admission``, not passed
        yet) is passed by the write itself, in the same round trip, with the body's
        bytes charged to the agent's budget; a post refused before that (bad input, no
        such room) passes it first, so it is counted as any request is."""
        agent = caller.require_agent()
        async with self.admitted_first(admission):
            room = await self.room(ref, key, caller)
            body = validation.message_body(body)
            pid = validation.parent_id(pid)
            if pid is not None and await self.history.find(room.id, pid) is None:
                raise Unprocessable("pid must be the id of a message in this room")
            mentioned = await self.mentions.resolve(body, agent.id)
        draft = Message.draft(room.id, agent.id, body, pid)
        public = not room.is_private
        words = validation.tokenize(body) if public else []
        frame = spliced(protocol.message_event_data(draft))
        mention_frame = spliced(protocol.mention_event_data(draft)) if mentioned else (b"", b"", b"")
        # The room's message_count is counted by the same script, atomically with the
        # message (so neither a crash nor a PostgreSQL outage loses it), and reaches
        # PostgreSQL within a second (flush_counts_forever): no UPDATE per post.
        appended = await self.history.append(draft, public=public, words=words, frame=frame,
                                             database=self.store.identity, mentioned=mentioned,
                                             mention_frame=mention_frame,
                                             admission=admission.charging(len(body.encode())))
        quota = await self.limiter.conclude(admission, appended.verdict)
        message = appended.value
        assert message is not None  # conclude raised otherwise
        metrics.MESSAGES_POSTED.labels(room_type="private" if room.is_private else "public").inc()
        return Posted(message.id, message.ts, quota)

    async def flush_counts(self) -> int:
        """Move counted message_count changes into PostgreSQL, in one statement;
        returns how many rooms. If PostgreSQL is away they go back, for next time."""
        counts = await self.history.take_parked_counts(self.store.identity)
        if not counts:
            return 0
        try:
            await self.store.count_messages(counts)
        except Unavailable:
            for room_id, delta in counts.items():
                await self.history.park_count(self.store.identity, room_id, delta)
            raise
        return len(counts)

    async def flush_counts_forever(self, every: float = 1.0) -> None:
        """Background task: move message counts to PostgreSQL once a second."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.flush_counts()
            except Unavailable:
                pass  # a store is away; the counts wait in Redis for the next round
            except Exception:
                log.exception("moving message counts to PostgreSQL failed")

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
        try:
            await self.history.park_count(self.store.identity, room.id, -1)
        except Unavailable:  # the message is gone already: a count is not worth a 503
            log.error("message_count change lost: Redis unavailable after a delete", extra={"room": room.id})

    # Direct messages

    async def send_dm(self, caller: Caller, recipient_id: str, body: object, *, admission: Admission) -> Posted:
        """Store and publish a DM; ``admission`` is passed as ``post_message`` passes it."""
        agent = caller.require_agent()
        async with self.admitted_first(admission):
            recipient = await self.store.get_agent(validation.parse_uuid(recipient_id, "recipient id"))
            body = validation.dm_body(body)
            if recipient is None:
                raise NotFound("recipient not found")
        ulid = ULID()
        dm = DirectMessage(str(ulid), agent.id, recipient.id, body, ulid.milliseconds)
        added = await self.history.add_dm(dm, protocol.dm_event(dm), admission=admission)
        quota = await self.limiter.conclude(admission, added.verdict)
        metrics.DMS_SENT.inc()
        return Posted(dm.id, dm.ts, quota)

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

    # Presence (the mechanism lives in aicq.presence; transports report their readers there)

    async def roster(self, room: Room, *, settle: bool = False) -> orjson.Fragment:
        """Who is in ``room`` (already authorised: a private room's key was checked), as JSON."""
        return await self.presence.roster(room.id, settle=settle)

    async def set_status(self, caller: Caller, state: object, text: object, ttl: object) -> dict[str, Any]:
        agent = caller.require_agent()
        status = Status(validation.agent_status(state), validation.status_text(text), validation.status_ttl(ttl))
        if not await self.presence.set_status(agent.id, status):
            raise Conflict("no live session: a status lasts as long as your sessions (open /ws first)")
        return status.to_public()

    # Realtime reads (transports call these; the hub delivers live events)

    async def position(self, room: Room) -> int | str:
        """The cursor a live-only subscription starts at (see History.position)."""
        return await self.history.position(room.id)

    def recovered(self, cursor: int | str) -> bool:
        """False when ``cursor`` is older than what history still holds: messages
        after it may have expired unseen."""
        cursor_ms = cursor if isinstance(cursor, int) else validation.ulid_ms(cursor)
        return cursor_ms >= self.history.cutoff()

    async def replay(self, room: Room, cursor: int | str, *, caller: Caller | None = None,
                     allowance: ReplayAllowance | None = None,
                     page_size: int = REPLAY_PAGE) -> AsyncIterator[list[Message]]:
        """Pages of every retained message of ``room`` after ``cursor``, oldest first.

        With a ``caller``, paid for as it goes: before a page is handed out, the caller
        spends one ``read_room`` per ``MESSAGES_PER_READ`` messages its connection has
        not paid for yet (``allowance`` carries the change from one replay to the
        next). A replay that finds the cursor current costs nothing, and a reconnect
        that replays a few messages in each of many rooms costs a read per 200 of
        them, not one per room. Raises RateLimited between pages when the budget is
        spent. (An SSE resume pays when it starts, and passes no caller.)
        """
        async for page in self.history.pages_after(room.id, cursor, page_size):
            if caller is not None:
                assert allowance is not None, "a charged replay carries its allowance"
                while allowance.left < len(page):
                    await self.admit(caller, "read_room")
                    allowance.left += MESSAGES_PER_READ
                allowance.left -= len(page)
            yield page

    async def replay_dms(self, agent_id: str, since_ms: int, page_size: int = REPLAY_PAGE,
                         ) -> AsyncIterator[list[DirectMessage]]:
        """Pages of every retained DM to ``agent_id`` from ``since_ms`` on (inclusive),
        oldest first."""
        cursor: tuple[int, str] | int = since_ms
        while True:
            page = await self.history.dms_after(agent_id, cursor, page_size)
            if page:
                yield page
            if len(page) < page_size:
                return
            cursor = (page[-1].ts, page[-1].id)

    async def messages_after(self, room: Room, cursor: int | str, limit: int) -> list[Message]:
        """Up to ``limit`` retained messages of ``room`` after ``cursor``, oldest first."""
        return await self.history.after(room.id, cursor, limit)

    async def dms_after(self, caller: Caller, cursor: tuple[int, str] | int, limit: int) -> list[DirectMessage]:
        """Up to ``limit`` of the caller's DMs after ``cursor`` ((ts, id), or unix ms
        inclusive), oldest first."""
        agent = caller.require_agent()
        return await self.history.dms_after(agent.id, cursor, limit)


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.2f}ms"


def _ago(moment: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"

