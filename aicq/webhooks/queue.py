"""The delivery queue: one Redis Stream, one consumer group over every instance.

Keys (all ours):

- ``webhooks:queue``        stream of deliveries due now (one entry per event and webhook)
- ``webhooks:retry``        sorted set: deliveries waiting for a retry, score = due time (ms)
- ``webhooks:born``         sorted set: delivery id → when its event happened, for deliveries
                            that have been retried (the oldest-pending gauge reads it)
- ``webhooks:overflow``     counter of deliveries never queued because the queue was full
- ``webhooks:results:{id}`` the last results of one webhook (list of JSON, 7 days)
- ``webhooks:to:{target}``  who wants what (see model.py)

An entry is written by the Lua that stores the message or DM (``ENQUEUE_LUA``, spliced
into history's scripts), so it exists exactly when the message does. Its fields:
``s`` the target set it came from, ``m`` the ``webhook|owner`` member, ``e`` the
event JSON (the body POSTed), ``t`` the event's time (ms); once retried, also ``d``
the delivery id and ``a`` the attempts already made. A fresh entry's delivery id is
its own stream id, so it never changes across retries or claims.

Every step that moves an entry (ack and delete, or ack and reschedule, or due retry
back into the stream) is one script: an entry is never both gone and not delivered.
An entry stays pending in the group while an instance delivers it; that instance
refreshes its claim (``heartbeat``), and entries whose claim went stale (their
instance died) are taken over with XAUTOCLAIM (Redis 6.2).
"""

from __future__ import annotations

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
MAX_QUEUED = 250_000  # deliveries waiting (ready + scheduled) before new ones are refused
RESULTS_KEPT = 10
RESULTS_TTL_MS = 7 * 24 * 3600 * 1000


def results_key(webhook_id: str) -> str:
    return f"webhooks:results:{webhook_id}"


# Spliced into history's append and DM scripts. Cheap when nobody listens: one
# SMEMBERS of a set that does not exist.
ENQUEUE_LUA = """
local function enqueue(target, event, ts, skip_owner)
  local key = 'webhooks:to:' .. target
  for _, member in ipairs(redis.call('SMEMBERS', key)) do
    local sep = string.find(member, '|', 1, true)
    if sep and string.sub(member, sep + 1) ~= skip_owner then
      if redis.call('XLEN', '%(stream)s') + redis.call('ZCARD', '%(retry)s') >= %(max)d then
        redis.call('INCR', '%(overflow)s')
      else
        redis.call('XADD', '%(stream)s', '*', 's', key, 'm', member, 'e', event, 't', ts)
      end
    end
  end
end
""" % {"stream": STREAM, "retry": RETRY, "max": MAX_QUEUED, "overflow": OVERFLOW}

# KEYS: stream, born   ARGV: group, entry id, delivery id   → 1, or 0 if someone else acked it
_FINISH = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""

# KEYS: stream, retry, born   ARGV: group, entry id, due ms, retry member, delivery id, born ms
_RESCHEDULE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
return 1
"""

# KEYS: retry, stream   ARGV: now ms, count   → how many moved
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local r = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', 's', r.s, 'm', r.m, 'e', r.e, 't', r.t, 'd', r.d, 'a', r.a)
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One delivery: an event for one webhook."""

    entry_id: str
    delivery_id: str
    target: str
    member: str
    event: bytes
    born_ms: int
    attempts: int  # made before this one

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
                       fields[b"m"].decode(), fields[b"e"], int(fields[b"t"]), int(fields.get(b"a", b"0")))
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def retry_member(self, attempts: int) -> bytes:
        # Every value a string: the Lua that moves it back reads it with cjson.
        return orjson.dumps({"d": self.delivery_id, "s": self.target, "m": self.member,
                             "e": self.event.decode(), "t": str(self.born_ms), "a": str(attempts)})


@dataclass(frozen=True, slots=True)
class Depth:
    ready: int
    scheduled: int
    oldest_ms: int | None  # when the oldest pending event happened
    overflow: int


class DeliveryQueue:
    """The stream as one instance's worker sees it (``consumer`` is the instance)."""

    def __init__(self, redis: aioredis.Redis, consumer: str):
        self.redis = redis
        self.consumer = consumer
        self._finish = redis.register_script(_FINISH)
        self._reschedule = redis.register_script(_RESCHEDULE)
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

    async def finish(self, entry: Entry) -> bool:
        """Done with ``entry`` (delivered, dropped or discarded). False: another instance
        had taken it over and acked it first."""
        return bool(await timed(self._finish(keys=[STREAM, BORN],
                                             args=[GROUP, entry.entry_id, entry.delivery_id])))

    async def reschedule(self, entry: Entry, due_ms: int, attempts: int) -> bool:
        """Try ``entry`` again at ``due_ms``, with ``attempts`` made so far."""
        return bool(await timed(self._reschedule(
            keys=[STREAM, RETRY, BORN],
            args=[GROUP, entry.entry_id, due_ms, entry.retry_member(attempts), entry.delivery_id,
                  entry.born_ms])))

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
        ready, scheduled, first, born, overflow = await timed(pipe.execute())
        candidates = [int(born[0][1])] if born else []
        if first and first[0][1].get(b"t"):
            candidates.append(int(first[0][1][b"t"]))
        return Depth(int(ready), int(scheduled), min(candidates) if candidates else None, int(overflow or 0))

    async def prune_consumers(self, idle_ms: int) -> int:
        """Forget consumers (instances) idle that long with nothing pending."""
        pruned = 0
        for consumer in await timed(self.redis.xinfo_consumers(STREAM, GROUP)):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                await timed(self.redis.xgroup_delconsumer(STREAM, GROUP, name))
                pruned += 1
        return pruned

    # Results, for GET /webhooks

    async def record(self, webhook_id: str, result: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(results_key(webhook_id), orjson.dumps(result))
        pipe.ltrim(results_key(webhook_id), 0, RESULTS_KEPT - 1)
        pipe.pexpire(results_key(webhook_id), RESULTS_TTL_MS)
        await timed(pipe.execute())

    async def results(self, webhook_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not webhook_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for webhook_id in webhook_ids:
            pipe.lrange(results_key(webhook_id), 0, RESULTS_KEPT - 1)
        replies = await timed(pipe.execute())
        return {w: [orjson.loads(r) for r in rows] for w, rows in zip(webhook_ids, replies, strict=True)}

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
