"""Rate limits, the message-byte budget and IP blocks (SPEC §5), atomic in Redis.

Each limit is a sliding-window log: a sorted set of request times per
(scope, endpoint), trimmed, counted and extended in one Lua script, so two
instances never both admit the request that crosses the line. A refused request
is not logged, so a client that backs off recovers on schedule.

Violations count abuse, not retries: a refusal is a violation only each time a
client's refused requests of one budget reach a whole budget's worth within a minute
(see ``violation_step``). A client that overshoots and then waits out Retry-After
never earns one; one that keeps asking for ten budgets more than it may is blocked.

Every count is made once, even when its command is retried after a lost reply
(``rediskit``): a request's log entry is a token chosen here, which a retry finds
already logged; a violation is counted under a token of its own.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from aicq import metrics, rediskit
from aicq.errors import Blocked, RateLimited
from aicq.rediskit import timed

log = logging.getLogger("aicq.security")

VIOLATION_WINDOW_S = 3600
VIOLATIONS_TO_BLOCK = 10
BLOCK_S = 24 * 3600
BYTE_BUDGET = 32 * 1024
BYTE_WINDOW_MS = 60_000
REFUSALS_WINDOW_S = 60


@dataclass(frozen=True)
class Limit:
    endpoint: str  # the metric label and part of the key
    requests: int
    window_s: int
    scope: str  # "ip", "agent" or "agent_or_ip"


LIMITS = {
    "register": Limit("register", 10, 3600, "ip"),
    "who": Limit("who", 100, 60, "ip"),
    "channels": Limit("channels", 60, 60, "ip"),
    "create_room": Limit("create_room", 10, 3600, "agent"),
    "read_room": Limit("read_room", 120, 60, "agent_or_ip"),
    "post_message": Limit("post_message", 30, 60, "agent"),
    "delete_message": Limit("delete_message", 30, 60, "agent"),
    "send_dm": Limit("send_dm", 60, 60, "agent"),
    "read_dms": Limit("read_dms", 60, 60, "agent"),
    "search": Limit("search", 30, 60, "ip"),
    "set_status": Limit("set_status", 30, 60, "agent"),
    "read_mentions": Limit("read_mentions", 60, 60, "agent"),
    "webhooks": Limit("webhooks", 30, 60, "agent"),  # register, list, delete
}


@dataclass(frozen=True)
class Quota:
    """What a limited response tells the client in X-RateLimit-* headers."""

    limit: int
    remaining: int
    reset: int  # unix seconds

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


# KEYS: window   ARGV: now_ms, window_ms, limit, member (the request's token)
# → {admitted (0/1), count after, oldest score in window}
_WINDOW = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local admitted = 0
if redis.call('ZSCORE', key, ARGV[4]) then
  admitted = 1  -- logged by an attempt whose reply was lost
elseif redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window * 2)
  admitted = 1
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {admitted, redis.call('ZCARD', key), tonumber(oldest[2] or now)}
"""

# KEYS: msgbytes   ARGV: now_ms, window_ms, budget, member ("<token>:<bytes>"), bytes
_BYTES = """
local key, now, window = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZSCORE', key, ARGV[4]) then return {1, now} end  -- spent by a lost attempt
local used = 0
for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
  used = used + tonumber(string.match(m, ':(%d+)$') or 0)
end
if used + tonumber(ARGV[5]) > tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2] or now)}
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, window * 2)
return {1, now}
"""

# KEYS: violations, blocked, done   ARGV: window_s, threshold, block_s, auto_block (0/1), ttl_s
_VIOLATION = """
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then
  return {tonumber(redis.call('GET', KEYS[1]) or '0'), 0}  -- counted by a lost attempt
end
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
if ARGV[4] == '1' and count >= tonumber(ARGV[2]) and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], 'repeated rate limit violations', 'EX', ARGV[3])
  return {count, 1}
end
return {count, 0}
"""

# KEYS: refusals   ARGV: window_s   → refusals in the window, this one included
_REFUSAL = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class Limiter:
    def __init__(self, redis: aioredis.Redis, *, auto_block: bool):
        self.redis = redis
        self.auto_block = auto_block
        self._window = redis.register_script(_WINDOW)
        self._bytes = redis.register_script(_BYTES)
        self._violation = redis.register_script(_VIOLATION)
        self._refusal = redis.register_script(_REFUSAL)

    def untouched(self, name: str) -> Quota:
        """The full budget of ``name``, for callers that are never counted."""
        limit = LIMITS[name]
        return Quota(limit.requests, limit.requests, int(time.time()) + limit.window_s)

    async def ensure_not_blocked(self, ip: str) -> None:
        if await timed(self.redis.exists(f"blocked:ip:{ip}")):
            metrics.BLOCKED_REQUESTS.labels(reason="ip_blocked").inc()
            log.warning("blocked IP attempted request", extra={"event": "blocked_request", "ip": ip})
            raise Blocked()

    async def hit(self, name: str, *, ip: str, agent_id: str | None) -> Quota:
        """Count one request against ``name``'s window; raise RateLimited when over."""
        limit = LIMITS[name]
        if limit.scope == "ip" or (limit.scope == "agent_or_ip" and agent_id is None):
            key = f"ratelimit:ip:{ip}:{limit.endpoint}:{limit.window_s}"
        else:
            assert agent_id is not None, f"{name} needs an authenticated agent"
            key = f"ratelimit:agent:{agent_id}:{limit.endpoint}:{limit.window_s}"
        now = int(time.time() * 1000)
        window_ms = limit.window_s * 1000
        admitted, count, oldest = await timed(
            self._window(keys=[key], args=[now, window_ms, limit.requests, rediskit.token()])
        )
        reset_ms = int(oldest) + window_ms
        quota = Quota(limit.requests, max(0, limit.requests - int(count)), math.ceil(reset_ms / 1000))
        if not admitted:
            await self._refuse(limit.endpoint, ip, agent_id, quota, reset_ms - now)
        return quota

    async def spend_bytes(self, *, ip: str, agent_id: str, size: int) -> None:
        """Charge ``size`` body bytes to the agent's 32 KB/min budget."""
        now = int(time.time() * 1000)
        admitted, oldest = await timed(self._bytes(
            keys=[f"msgbytes:{agent_id}"],
            args=[now, BYTE_WINDOW_MS, BYTE_BUDGET, f"{rediskit.token()}:{size}", size],
        ))
        if not admitted:
            reset_ms = int(oldest) + BYTE_WINDOW_MS
            quota = Quota(BYTE_BUDGET, 0, math.ceil(reset_ms / 1000))
            await self._refuse("message_bytes", ip, agent_id, quota, reset_ms - now)

    async def _refuse(self, endpoint: str, ip: str, agent_id: str | None, quota: Quota, wait_ms: int) -> None:
        metrics.RATE_LIMIT_HITS.labels(endpoint=endpoint).inc()
        log.warning(
            "rate limit exceeded",
            extra={"event": "rate_limit_exceeded", "ip": ip, "agent": agent_id, "endpoint": endpoint},
        )
        if await self.is_violation(endpoint, ip):
            count, blocked = await timed(self._violation(
                keys=[f"violations:ip:{ip}", f"blocked:ip:{ip}", f"violations:done:{rediskit.token()}"],
                args=[VIOLATION_WINDOW_S, VIOLATIONS_TO_BLOCK, BLOCK_S, "1" if self.auto_block else "0",
                      rediskit.TOKEN_TTL_S],
            ))
            if blocked:
                log.warning(
                    "IP auto-blocked for repeated violations",
                    extra={"event": "ip_auto_blocked", "ip": ip, "violations": int(count)},
                )
        retry_after = max(1, math.ceil(wait_ms / 1000))
        raise RateLimited(headers={**quota.headers(), "Retry-After": str(retry_after)})

    async def refuse(self, endpoint: str, ip: str, agent_id: str | None, quota: Quota, wait_ms: int) -> None:
        """Refuse a request over a budget kept elsewhere (room keys): 429, counted like any."""
        await self._refuse(endpoint, ip, agent_id, quota, wait_ms)

    async def is_violation(self, endpoint: str, ip: str) -> bool:
        """Count one refusal of ``endpoint`` for ``ip``: True on every ``violation_step``-th
        within a minute."""
        refused = await timed(self._refusal(keys=[f"refused:ip:{ip}:{endpoint}"], args=[REFUSALS_WINDOW_S]))
        return int(refused) % violation_step(endpoint) == 0


# Wrong private-room keys (aicq.roomkeys) a client may try, and a room may be tried
# with, per window; a right key costs nothing.
KEY_GUESSES_PER_IP = 10
KEY_GUESSES_PER_ROOM = 100
KEY_GUESS_WINDOW_S = 300

# Refusals that make one violation, for budgets outside LIMITS (whole budgets' worth too).
VIOLATION_STEPS = {"message_bytes": LIMITS["post_message"].requests, "room_key": KEY_GUESSES_PER_IP}


def violation_step(endpoint: str) -> int:
    """How many refusals of ``endpoint`` within a minute make one violation: its budget."""
    limit = LIMITS.get(endpoint)
    return limit.requests if limit is not None else VIOLATION_STEPS[endpoint]
