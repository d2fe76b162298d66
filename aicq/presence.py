"""Presence on this instance: who is live here, kept in Redis under this instance's lease.

A transport (a WebSocket session, an SSE stream) reports each live reader through a
:class:`Visitor`: ``identify`` once it knows the agent, ``enter`` / ``exit`` a room
as it subscribes and unsubscribes, ``close`` when it ends. Those calls only count,
locally and at once; one background task per instance, the keeper, makes Redis
agree:

- whatever changed since its last round goes to Redis in one script (a reader who
  leaves and comes back in between costs nothing);
- once per period (``PRESENCE_TTL`` / 3) it renews the instance's lease, clears
  instances whose lease ran out, and publishes the leaves whose grace period ended;
- when it finds its own lease lapsed (Redis restarted, or this process stalled past
  the lease) it writes everything it holds again, in one script.

So Redis work grows with changes, not with sessions, and an instance that dies
takes its entries with it within ``PRESENCE_TTL``: its lease is ``2/3`` of it, and
the others look every ``1/3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from aicq import metrics
from aicq.errors import Unavailable
from aicq.models import Agent
from aicq.presence_store import ONLINE, Change, Hold, PresenceStore, Readers, Release
from aicq.settings import Settings
from aicq.shutdown import cancel_and_wait

log = logging.getLogger("aicq.presence")

MAX_BATCH = 2000  # changes per script: a larger backlog goes in several rounds
SETTLE_S = 2.0  # how long a reader waits for its own arrival to reach Redis
DEADLINE_SLACK_S = 0.05

Key = tuple[str, str | None]  # (room id or ONLINE, agent id; None: anonymous readers)


@dataclass(frozen=True, slots=True)
class Status:
    """What an agent says it is doing (validated by the service)."""

    state: str  # one of validation.STATUSES
    text: str | None = None
    ttl: int | None = None  # seconds; None: until the agent's last session ends

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.state}
        if self.text:
            out["text"] = self.text
        if self.ttl:
            out["ttl"] = self.ttl
        return out

    def stored(self) -> bytes:
        """How Redis keeps it; b"" for the default (online, no text)."""
        if self.state == "online" and not self.text:
            return b""
        return orjson.dumps({"status": self.state, **({"text": self.text} if self.text else {})})


class Presence:
    def __init__(self, redis: aioredis.Redis, settings: Settings):
        ttl_ms = int(settings.presence_ttl * 1000)
        self.period = settings.presence_ttl / 3
        self.grace = settings.presence_grace
        self.store = PresenceStore(redis, instance=settings.instance, lease_ms=ttl_ms * 2 // 3,
                                   grace_ms=int(self.grace * 1000))
        self._wanted: dict[Key, int] = {}  # local live readers per key
        self._applied: dict[Key, int] = {}  # what Redis holds for this instance (1 per agent key)
        self._dirty: set[Key] = set()
        self._resync = True  # the first round registers the lease and anything held by then
        self._names: dict[str, bytes] = {}  # agent id → name as JSON (b"" for none)
        self._changes = 0  # local changes so far
        self._settled = 0  # changes Redis has
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._deadlines: list[float] = []  # loop times when due leaves or statuses end
        self._next_tick = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def visitor(self) -> Visitor:
        return Visitor(self)

    # Lifecycle

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name="aicq-presence")

    async def stop(self) -> None:
        """Stop renewing and hand back what this instance held (leaves after the grace
        period, so readers who move to another instance never seem to leave)."""
        await cancel_and_wait(self._task)
        try:
            await self.store.retire()
        except Unavailable:
            log.warning("presence not handed back (Redis unavailable); it lapses with the lease")

    # Reads and status

    async def roster(self, room_id: str, *, settle: bool = False) -> orjson.Fragment:
        """``{agents: [{id, name?, since, status, text?}], readers}`` of one room, as JSON
        that goes out as it is (REST body, or inside a WebSocket ``ok``).

        ``settle``: first let this instance's own recent arrivals reach Redis (a reader
        asking for the room it just entered expects to find itself there).
        """
        if settle:
            await self.settled(SETTLE_S)
        return orjson.Fragment(await self.store.roster(room_id))

    async def counts(self, room_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(agents, readers) present per room, in one round trip."""
        return await self.store.counts(room_ids)

    async def set_status(self, agent_id: str, status: Status) -> bool:
        """Store and announce ``status``; False when the agent has no live session."""
        if (ONLINE, agent_id) in self._wanted:
            await self.settled(SETTLE_S)  # its session may have just opened
        stored = await self.store.set_status(agent_id, status.stored(), (status.ttl or 0) * 1000)
        if stored and status.ttl:
            self._at(status.ttl)
        return stored

    async def settled(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until Redis has every change made so far."""
        target = self._changes
        if self._settled >= target:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wake.set()
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass  # Redis is slow or away: read what it has

    # Counting (synchronous: visitors call these from their own code paths)

    def _count(self, key: Key, delta: int) -> None:
        count = self._wanted.get(key, 0) + delta
        if count > 0:
            self._wanted[key] = count
        else:
            self._wanted.pop(key, None)
        self._dirty.add(key)
        self._changes += 1
        self._wake.set()

    def _connect(self, agent: Agent) -> None:
        if (ONLINE, agent.id) not in self._wanted:
            self._names[agent.id] = orjson.dumps(agent.name) if agent.name else b""
        self._count((ONLINE, agent.id), +1)

    def _disconnect(self, agent: Agent) -> None:
        self._count((ONLINE, agent.id), -1)
        if (ONLINE, agent.id) not in self._wanted:
            self._names.pop(agent.id, None)

    def _at(self, delay: float) -> None:
        """Run a tick ``delay`` seconds from now (a leave or a status falls due then)."""
        heapq.heappush(self._deadlines, asyncio.get_running_loop().time() + delay + DEADLINE_SLACK_S)
        self._wake.set()

    # The keeper

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            if not (self._dirty or self._resync):
                wake_at = min(self._next_tick, self._deadlines[0]) if self._deadlines else self._next_tick
                self._wake.clear()
                if wake_at > loop.time():
                    # Not asyncio.wait_for: on Python 3.11 it may swallow the cancel that
                    # stops this loop, when it comes as the event is set (see shutdown.py).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(wake_at):
                            await self._wake.wait()
            try:
                if self._dirty or self._resync:
                    await self._flush()
                self._release_waiters()
                now = loop.time()
                if now >= self._next_tick or (self._deadlines and self._deadlines[0] <= now):
                    await self._tick()
                if failures:
                    log.info("presence is written to Redis again")
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, or a bug: what changed stays to be written
                failures += 1
                if failures == 1:
                    log.warning("presence not written to Redis (%s); retrying", type(exc).__name__,
                                exc_info=not isinstance(exc, Unavailable))
                await asyncio.sleep(min(self.period, 0.05 * 2 ** failures))

    async def _flush(self) -> None:
        """Write what changed (everything, after a lapse) in one script."""
        full = self._resync
        if full or len(self._dirty) <= MAX_BATCH:
            batch, self._dirty = self._dirty, set()
        else:
            batch = {self._dirty.pop() for _ in range(MAX_BATCH)}
        complete, upto = not self._dirty, self._changes
        keys = set(self._wanted) if full else batch
        changes: list[Change] = []
        applied: dict[Key, int] = {}
        releases = False
        for room, agent in keys:
            want = self._wanted.get((room, agent), 0)
            have = 0 if full else self._applied.get((room, agent), 0)
            if agent is None:
                if want != have:
                    changes.append(Readers(room, want))
                applied[(room, agent)] = want
            elif want and not have:
                changes.append(Hold(room, agent, self._names.get(agent, b"").decode()))
                applied[(room, agent)] = 1
            elif have and not want:
                changes.append(Release(room, agent))
                applied[(room, agent)] = 0
                releases = True
        try:
            lapsed = await self.store.apply(changes, full=full) if changes or full else False
        except BaseException:
            self._dirty |= batch
            raise
        if full:
            self._resync = False
            self._applied = {}
            releases = True  # whatever Redis held beyond what we want was released
        for key, value in applied.items():
            if value:
                self._applied[key] = value
            else:
                self._applied.pop(key, None)
        if lapsed and not full:
            self._resync = True
            log.warning("presence lease had lapsed; writing everything this instance holds again")
        elif complete:
            self._settled = max(self._settled, upto)
        if releases and self.grace > 0:
            self._at(self.grace)
        metrics.PRESENCE_ENTRIES.set(len(self._applied))

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        lapsed, more = await self.store.tick()
        metrics.PRESENCE_RENEWALS.inc()
        now = loop.time()
        self._next_tick = now if more else now + self.period
        while self._deadlines and self._deadlines[0] <= now:
            heapq.heappop(self._deadlines)
        if lapsed and not self._resync:
            self._resync = True
            log.warning("presence lease had lapsed; writing everything this instance holds again")

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        waiting = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= self._settled:
                waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting


class Visitor:
    """One live reader (a WebSocket session, an SSE stream): the rooms it reads, as whom.

    Every method is synchronous and idempotent: entering a room twice counts once,
    closing twice releases once.
    """

    __slots__ = ("agent", "presence", "rooms")

    def __init__(self, presence: Presence):
        self.presence = presence
        self.agent: Agent | None = None
        self.rooms: set[str] = set()

    def identify(self, agent: Agent) -> None:
        """The reader proved it is ``agent``: it is now live, and named in its rooms."""
        if self.agent is not None:
            return
        self.presence._connect(agent)
        for room_id in self.rooms:
            self.presence._count((room_id, None), -1)
            self.presence._count((room_id, agent.id), +1)
        self.agent = agent

    def enter(self, room_id: str) -> None:
        if room_id not in self.rooms:
            self.rooms.add(room_id)
            self.presence._count((room_id, self.agent.id if self.agent else None), +1)

    def exit(self, room_id: str) -> None:
        if room_id in self.rooms:
            self.rooms.discard(room_id)
            self.presence._count((room_id, self.agent.id if self.agent else None), -1)

    def close(self) -> None:
        for room_id in list(self.rooms):
            self.exit(room_id)
        if self.agent is not None:
            self.presence._disconnect(self.agent)
            self.agent = None
