"""The delivery queue: one Redis Stream, one consumer group over every instance.

Keys (all ours):

- ``webhooks:queue``        stream of events to expand and deliveries due now
- ``webhooks:retry``        sorted set: deliveries waiting for a retry, score = due time (ms)
- ``webhooks:born``         sorted set: delivery id → when its event happened, for deliveries
                            waiting outside the stream (retried or parked): the
                            oldest-pending gauge reads it
- ``webhooks:overflow``     counter of events and deliveries refused because the queue, or
                            an endpoint's backlog, was full
- ``webhooks:to:{target}``  who wants what (see model.py)
- ``webhooks:streak:{id}``  an endpoint's failed rounds in a row (gone at its next success)
- ``webhooks:hold:{id}``    until when (ms) an endpoint that just failed is left alone
- ``webhooks:parked:{id}``  deliveries waiting for their endpoint (see parking.py), with
  ``webhooks:parked`` (the set of endpoints that have some) and ``webhooks:parked:count``

Two kinds of entries. An *event* entry is written by the Lua that stores the message
or DM (``ENQUEUE_LUA``, spliced into history's scripts), so it exists exactly when the
message does, and it costs the post one XADD however many webhooks want it: ``s`` the
target set, ``e`` the event JSON (the body POSTed), ``t`` the event's time (ms), ``x``
an owner to skip (a room message's author). A worker *expands* it (``_EXPAND``, one
script): one *delivery* per webhook listed in ``s`` then, and the event entry gone. A
delivery has ``s``, ``e``, ``t``, ``m`` (the ``webhook|owner`` member) and ``d``, its
delivery id, ``<event entry id>.<n>``, which never changes across retries, parking
or claims; once retried, also ``a``, the attempts already made. A delivery whose
endpoint is on hold or already has deliveries parked is parked at once, by the
expansion itself: a backlog for a failing endpoint costs no Python work at all.

Every step that moves an entry (ack and delete, ack and reschedule, ack and park, due
retry back into the stream) is one script: an entry is never both gone and not
delivered.
An entry stays pending in the group while an instance delivers it; that instance
refreshes its claim (``heartbeat``), and entries whose claim went stale (their
instance died) are taken over with XAUTOCLAIM (Redis 6.2).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from aicq.rediskit import timed
from aicq.webhooks.model import event_kind, parse_member

STREAM = "webhooks:queue"
GROUP = "delivery"
RETRY = "webhooks:retry"
BORN = "webhooks:born"
OVERFLOW = "webhooks:overflow"
PARKED_SET = "webhooks:parked"
PARKED_COUNT = "webhooks:parked:count"
MAX_QUEUED = 250_000  # entries in the stream and the retry set before new events are refused
MAX_BACKLOG = 5_000  # deliveries parked for one endpoint before its new ones are refused
MAX_DELAY_MS = 3600 * 1000
HOLD_GRACE_MS = 60_000


def streak_key(webhook_id: str) -> str:
    return f"webhooks:streak:{webhook_id}"


def hold_key(webhook_id: str) -> str:
    return f"webhooks:hold:{webhook_id}"


def parked_key(webhook_id: str) -> str:
    return f"webhooks:parked:{webhook_id}"


# A delivery kept outside the stream (retry set, parking) is its ``retry_member``;
# this puts one back, with its delivery id and attempts.
REQUEUE_LUA = """
local function requeue(stream, member)
  local r = cjson.decode(member)
  redis.call('XADD', stream, '*', 's', r.s, 'm', r.m, 'e', r.e, 't', r.t, 'd', r.d, 'a', r.a)
end
"""


# Spliced into history's append and DM scripts: constant work per event, whatever
# the number of webhooks; one EXISTS when nobody listens.
ENQUEUE_LUA = """
local function enqueue(target, event, ts, skip_owner)
  local key = 'webhooks:to:' .. target
  if redis.call('EXISTS', key) == 0 then return end
  if redis.call('XLEN', '%(stream)s') + redis.call('ZCARD', '%(retry)s') >= %(max)d then
    redis.call('INCR', '%(overflow)s')
    return
  end
  redis.call('XADD', '%(stream)s', '*', 's', key, 'e', event, 't', ts, 'x', skip_owner)
end
""" % {"stream": STREAM, "retry": RETRY, "max": MAX_QUEUED, "overflow": OVERFLOW}

# An event entry becomes one delivery per webhook listed for it, atomically: into the
# stream, or parked when its endpoint is on hold or has a backlog parked already.
# KEYS: stream, parked set, born, parked count   ARGV: group, event entry id, now ms
# → deliveries made (-1: already expanded)
_EXPAND = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #found == 0 then return 0 end
local f, list = {}, found[1][2]
for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
local made, parked_now, now = 0, 0, tonumber(ARGV[3])
for n, member in ipairs(redis.call('SMEMBERS', f.s)) do
  local sep = string.find(member, '|', 1, true)
  if sep and string.sub(member, sep + 1) ~= (f.x or '') then
    local webhook, delivery = string.sub(member, 1, sep - 1), ARGV[2] .. '.' .. n
    local parked = '%(parked)s' .. webhook
    local hold = tonumber(redis.call('GET', '%(hold)s' .. webhook) or '0')
    local backlog = redis.call('LLEN', parked)
    if backlog >= %(backlog)d then
      redis.call('INCR', '%(overflow)s')
    elseif hold > now or backlog > 0 then
      redis.call('RPUSH', parked, cjson.encode({d = delivery, s = f.s, m = member, e = f.e, t = f.t, a = '0'}))
      redis.call('SADD', KEYS[2], webhook)
      redis.call('ZADD', KEYS[3], f.t, delivery)
      parked_now = parked_now + 1
    else
      redis.call('XADD', KEYS[1], '*', 's', f.s, 'm', member, 'e', f.e, 't', f.t, 'd', delivery)
    end
    made = made + 1
  end
end
if parked_now > 0 then redis.call('INCRBY', KEYS[4], parked_now) end
return made
""" % {"parked": parked_key(""), "hold": hold_key(""), "backlog": MAX_BACKLOG, "overflow": OVERFLOW}

# KEYS: stream, born   ARGV: group, entry id, delivery id   → 1, or 0 if someone else acked it
_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""

# A failed attempt. The first failure of a round (attempts in flight together fail
# together) puts the endpoint on hold for base × 2^(n-1) (n: failed rounds in a row;
# at most an hour, times a jitter) and schedules this delivery as the round's one
# probe, at the end of the hold (never past its event's deadline). Later failures of
# the round park their delivery with the endpoint's backlog. The hold key outlives
# the hold by HOLD_GRACE_MS, so the sweep can tell "the probe is due" from "nothing
# will wake this backlog".
# KEYS: stream, retry, born, streak, hold, parked list, parked set, parked count
# ARGV: group, entry id, retry member, delivery id, born ms, base ms, max delay ms,
#       deadline ms, jitter (0.75..1), streak ttl ms, now ms, webhook id
# → when the endpoint is tried next (ms); 0: another instance had acked the entry
_FAILED = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
local now = tonumber(ARGV[11])
local held = tonumber(redis.call('GET', KEYS[5]) or '0')
if held > now then
  redis.call('RPUSH', KEYS[6], ARGV[3])
  redis.call('SADD', KEYS[7], ARGV[12])
  redis.call('INCR', KEYS[8])
  return held
end
local streak = redis.call('INCR', KEYS[4])
redis.call('PEXPIRE', KEYS[4], ARGV[10])
local delay = math.min(tonumber(ARGV[6]) * 2 ^ math.min(streak - 1, 40), tonumber(ARGV[7]))
local due = now + math.floor(delay * tonumber(ARGV[9]))
redis.call('SET', KEYS[5], string.format('%%.0f', due), 'PX', due - now + %(grace)d)
due = math.min(due, tonumber(ARGV[8]))
redis.call('ZADD', KEYS[2], due, ARGV[3])
return due
""" % {"grace": HOLD_GRACE_MS}

# KEYS: retry, stream   ARGV: now ms, count   → how many moved
_MOVE_DUE = REQUEUE_LUA + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  requeue(KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One delivery (an event for one webhook), or an event still to expand (no member;
    its delivery id is then its entry id, of no use to anyone)."""

    entry_id: str
    delivery_id: str
    target: str
    member: str  # '' for an event entry
    event: bytes
    born_ms: int
    attempts: int  # made before this one

    @property
    def expanded(self) -> bool:
        return bool(self.member)

    @property
    def webhook_id(self) -> str:
        return parse_member(self.member)[0]

    @property
    def kind(self) -> str:
        return event_kind(self.target)

    @classmethod
    def from_stream(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry | None:
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        try:
            return cls(entry_id, fields.get(b"d", entry_id.encode()).decode(), fields[b"s"].decode(),
                       fields.get(b"m", b"").decode(), fields[b"e"], int(fields[b"t"]),
                       int(fields.get(b"a", b"0")))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def retry_member(self, attempts: int) -> bytes:
        # Every value a string: the Lua that moves it back reads it with cjson.
        return orjson.dumps({"d": self.delivery_id, "s": self.target, "m": self.member,
                             "e": self.event.decode(), "t": str(self.born_ms), "a": str(attempts)})


@dataclass(frozen=True, slots=True)
class Depth:
    ready: int  # in the stream: events to expand, deliveries due or in flight
    scheduled: int  # waiting for a retry
    parked: int  # waiting for their endpoint (parking.py)
    oldest_ms: int | None  # when the oldest pending event happened
    overflow: int


class DeliveryQueue:
    """The stream as one instance's worker sees it (``consumer`` is the instance)."""

    def __init__(self, redis: aioredis.Redis, consumer: str):
        self.redis = redis
        self.consumer = consumer
        self._expand = redis.register_script(_EXPAND)
        self._finish = redis.register_script(_FINISH)
        self._failed = redis.register_script(_FAILED)
        self._move_due = redis.register_script(_MOVE_DUE)

    async def ensure_group(self) -> None:
        try:
            await timed(self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to ``count`` new entries for this consumer, waiting up to ``block_ms``.

        Not timed: a blocking read's wait is not Redis latency.
        """
        try:
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=count,
                                                block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # the stream was deleted (FLUSHDB, an operator): start again
            return []
        return await self._accept([e for _, entries in reply or [] for e in entries])

    async def claim_stale(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries whose instance stopped refreshing its claim (it died): now ours."""
        reply = await timed(self.redis.xautoclaim(STREAM, GROUP, self.consumer, min_idle_ms, "0-0",
                                                  count=count))
        claimed = reply[1] if reply else []
        gone = [entry_id for entry_id, fields in claimed if not fields]
        if gone:  # deleted while pending (6.2 returns them empty): nothing left to deliver
            await timed(self.redis.xack(STREAM, GROUP, *gone))
        return await self._accept([(i, f) for i, f in claimed if f])

    async def heartbeat(self, entry_ids: list[str]) -> None:
        """Refresh our claim on entries we are delivering, so nobody takes them over."""
        if entry_ids:
            await timed(self.redis.xclaim(STREAM, GROUP, self.consumer, 0, entry_ids, justid=True))

    async def expand(self, entry: Entry) -> int:
        """Replace an event entry by one delivery entry per webhook that wants it now."""
        return int(await timed(self._expand(keys=[STREAM, PARKED_SET, BORN, PARKED_COUNT],
                                            args=[GROUP, entry.entry_id, _now_ms()])))

    async def finish(self, entry: Entry) -> bool:
        """Done with ``entry`` (delivered, dropped or discarded). False: another instance
        had taken it over and acked it first."""
        return bool(await timed(self._finish(keys=[STREAM, BORN],
                                             args=[GROUP, entry.entry_id, entry.delivery_id])))

    async def failed(self, entry: Entry, attempts: int, *, base_ms: int, deadline_ms: int,
                     window_ms: int) -> int | None:
        """After a failed attempt: the round's probe, rescheduled, or parked (see _FAILED).

        Returns when the endpoint is tried next (ms), or None when another instance
        had acked the entry.
        """
        webhook_id = entry.webhook_id
        due = await timed(self._failed(
            keys=[STREAM, RETRY, BORN, streak_key(webhook_id), hold_key(webhook_id), parked_key(webhook_id),
                  PARKED_SET, PARKED_COUNT],
            args=[GROUP, entry.entry_id, entry.retry_member(attempts), entry.delivery_id, entry.born_ms,
                  base_ms, MAX_DELAY_MS, deadline_ms, random.uniform(0.75, 1.0), window_ms, _now_ms(),
                  webhook_id]))
        return int(due) or None

    async def move_due(self, count: int = 200) -> int:
        """Put retries that are due back into the stream; returns how many."""
        return int(await timed(self._move_due(keys=[RETRY, STREAM], args=[_now_ms(), count])))

    async def depth(self) -> Depth:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(STREAM)
        pipe.zcard(RETRY)
        pipe.xrange(STREAM, "-", "+", count=1)
        pipe.zrange(BORN, 0, 0, withscores=True)
        pipe.get(OVERFLOW)
        pipe.get(PARKED_COUNT)
        ready, scheduled, first, born, overflow, parked = await timed(pipe.execute())
        candidates = [int(born[0][1])] if born else []
        if first and first[0][1].get(b"t"):
            candidates.append(int(first[0][1][b"t"]))
        return Depth(int(ready), int(scheduled), int(parked or 0), min(candidates) if candidates else None,
                     int(overflow or 0))

    async def prune_consumers(self, idle_ms: int) -> int:
        """Forget consumers (instances) idle that long with nothing pending."""
        pruned = 0
        for consumer in await timed(self.redis.xinfo_consumers(STREAM, GROUP)):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                await timed(self.redis.xgroup_delconsumer(STREAM, GROUP, name))
                pruned += 1
        return pruned

    async def _accept(self, raw: list[tuple[Any, Any]]) -> list[Entry]:
        """Parse entries; one that is not ours to parse is removed rather than retried forever."""
        entries, foreign = [], []
        for entry_id, fields in raw:
            entry = Entry.from_stream(entry_id, fields)
            if entry is None:
                foreign.append(entry_id)
            else:
                entries.append(entry)
        if foreign:
            await timed(self.redis.xack(STREAM, GROUP, *foreign))
            await timed(self.redis.xdel(STREAM, *foreign))
        return entries


def _now_ms() -> int:
    return int(time.time() * 1000)
