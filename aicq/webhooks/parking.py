"""Per-endpoint state in Redis: its hold after a failure, the deliveries parked while
it cannot take them, and its recent results.

Keys: ``webhooks:parked:{id}`` (a list of deliveries waiting for the endpoint, oldest
first, each a retry member), ``webhooks:parked`` (the endpoints that have some),
``webhooks:parked:count``, and ``webhooks:results:{id}`` (its last results, newest
first, 7 days); the hold and the streak are described in queue.py.

A delivery that cannot go now, because its endpoint is on hold, has a backlog, or
already has its share of this instance's slots, is *parked*: out of the stream once
(by the expansion itself, mostly), and back once, when the endpoint next succeeds or,
failing that, when a sweep finds its hold over. Nothing spins: an endpoint that is
down for an hour costs one attempt per backoff step, whatever its backlog.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from aicq.rediskit import timed
from aicq.webhooks.queue import (
    BORN,
    GROUP,
    PARKED_COUNT,
    PARKED_SET,
    REQUEUE_LUA,
    STREAM,
    Entry,
    hold_key,
    parked_key,
    streak_key,
)

RESULTS_KEPT = 10
RESULTS_TTL_MS = 7 * 24 * 3600 * 1000
DROP_CHUNK = 1000


def results_key(webhook_id: str) -> str:
    return f"webhooks:results:{webhook_id}"


# KEYS: stream, parked list, parked set, born, parked count
# ARGV: group, entry id, retry member, webhook id, delivery id, born ms   → 0: acked elsewhere
_PARK = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
redis.call('INCR', KEYS[5])
return 1
"""

# KEYS: parked list, parked set, stream, parked count   ARGV: webhook id, how many → moved
_UNPARK = REQUEUE_LUA + """
local moved = 0
for _ = 1, tonumber(ARGV[2]) do
  local member = redis.call('LPOP', KEYS[1])
  if not member then break end
  requeue(KEYS[3], member)
  moved = moved + 1
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
if moved > 0 then redis.call('DECRBY', KEYS[4], moved) end
return moved
"""

# KEYS: parked list, parked set, born, parked count   ARGV: webhook id, how many → dropped
_DROP = """
local dropped = 0
for _ = 1, tonumber(ARGV[2]) do
  local member = redis.call('LPOP', KEYS[1])
  if not member then break end
  redis.call('ZREM', KEYS[3], cjson.decode(member).d)
  dropped = dropped + 1
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
if dropped > 0 then redis.call('DECRBY', KEYS[4], dropped) end
return dropped
"""


class Parking:
    def __init__(self, redis: aioredis.Redis):
        self.redis = redis
        self._park = redis.register_script(_PARK)
        self._unpark = redis.register_script(_UNPARK)
        self._drop = redis.register_script(_DROP)

    async def held_until(self, webhook_id: str) -> int | None:
        """Until when the endpoint is left alone after a failure (ms), if it is."""
        until = await timed(self.redis.get(hold_key(webhook_id)))
        return int(until) if until else None

    async def park(self, entry: Entry) -> bool:
        """Take ``entry`` out of the stream until its endpoint can take it."""
        webhook_id = entry.webhook_id
        return bool(await timed(self._park(
            keys=[STREAM, parked_key(webhook_id), PARKED_SET, BORN, PARKED_COUNT],
            args=[GROUP, entry.entry_id, entry.retry_member(entry.attempts), webhook_id, entry.delivery_id,
                  entry.born_ms])))

    async def unpark(self, webhook_id: str, count: int) -> int:
        """Put up to ``count`` of the endpoint's parked deliveries back, oldest first."""
        return int(await timed(self._unpark(
            keys=[parked_key(webhook_id), PARKED_SET, STREAM, PARKED_COUNT], args=[webhook_id, count])))

    async def drop(self, webhook_id: str) -> int:
        """Forget every delivery parked for the endpoint (deleted or disabled): how many."""
        dropped = 0
        while True:
            gone = int(await timed(self._drop(
                keys=[parked_key(webhook_id), PARKED_SET, BORN, PARKED_COUNT], args=[webhook_id, DROP_CHUNK])))
            dropped += gone
            if gone < DROP_CHUNK:
                return dropped

    async def with_parked(self, sample: int) -> list[str]:
        """Some of the webhooks that have parked deliveries (for the sweep)."""
        members = await timed(self.redis.srandmember(PARKED_SET, sample))
        return [m.decode() for m in members or []]

    async def record(self, webhook_id: str, result: dict[str, Any], *, release: int = 0) -> None:
        """Keep ``result``. ``release`` > 0: it was a success, so the endpoint's streak and
        hold end, and up to ``release`` parked deliveries go back to the stream."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(results_key(webhook_id), orjson.dumps(result))
        pipe.ltrim(results_key(webhook_id), 0, RESULTS_KEPT - 1)
        pipe.pexpire(results_key(webhook_id), RESULTS_TTL_MS)
        if release:
            pipe.delete(streak_key(webhook_id), hold_key(webhook_id))
            await self._unpark(keys=[parked_key(webhook_id), PARKED_SET, STREAM, PARKED_COUNT],
                               args=[webhook_id, release], client=pipe)
        await timed(pipe.execute())

    async def results(self, webhook_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not webhook_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for webhook_id in webhook_ids:
            pipe.lrange(results_key(webhook_id), 0, RESULTS_KEPT - 1)
        replies = await timed(pipe.execute())
        return {w: [orjson.loads(r) for r in rows] for w, rows in zip(webhook_ids, replies, strict=True)}
