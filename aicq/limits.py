"""Rate limits, the message-byte budget and IP blocks (SPEC §5), atomic in Redis.

A request's ``Admission`` is everything it is counted for — its address not blocked,
its signature's nonce unused, its action's window, a message's bytes — passed by one
Lua script in one round trip: alone, before a handler runs, or at the head of the
script that stores a post (so a post is one round trip in all).

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
from dataclasses import dataclass, field, replace

import orjson
import redis.asyncio as aioredis

from aicq import metrics, rediskit
from aicq.auth import NONCE_TTL_S, NONCE_USED, nonce_key
from aicq.errors import Blocked, RateLimited, Unauthorized
from aicq.rediskit import timed
from aicq.redislane import Lane

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


# Admission: every check a request passes before it acts, in this order, each spending
# what it counts as it passes — the address is not blocked; the signature's nonce is
# unused (spent); the action's sliding-window log has room (one entry, the request's
# token); a message's bytes fit the agent's byte budget (spent). A script that writes
# (the append) runs it at its head, so an admitted post is one round trip. Every entry
# is the admission's token, so a retried admission finds itself counted and passes.
# admit(a): a = the Admission's JSON. Returns false, count, oldest when admitted (the
# window's count and oldest entry, 0s without a window), or the refusal:
# {'blocked'} | {'nonce'} | {'window', count, oldest} | {'bytes', oldest}.
ADMIT_LUA = """
local function slide(key, now, window, limit, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local admitted = 0
  if redis.call('ZSCORE', key, member) then
    admitted = 1  -- logged by an attempt whose reply was lost
  elseif redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, window * 2)
    admitted = 1
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return admitted, redis.call('ZCARD', key), tonumber(oldest[2] or now)
end
local function spend(key, now, window, budget, member, size)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZSCORE', key, member) then return true, now end  -- spent by a lost attempt
  local used = 0
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    used = used + tonumber(string.match(m, ':(%d+)$') or 0)
  end
  if used + size > budget then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return false, tonumber(oldest[2] or now)
  end
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window * 2)
  return true, now
end
local function admit(a)
  if a.blocked and redis.call('EXISTS', a.blocked) == 1 then return {'blocked'} end
  if a.nonce then
    local holder = redis.call('GET', a.nonce)
    if holder and holder ~= a.token then return {'nonce'} end
    if not holder then redis.call('SET', a.nonce, a.token, 'EX', a.nonce_ttl) end
  end
  local count, oldest = 0, 0
  if a.window then
    local admitted
    admitted, count, oldest = slide(a.window, a.now, a.window_ms, a.limit, a.token)
    if admitted == 0 then return {'window', count, oldest} end
  end
  if a.bytes then
    local fits, since = spend(a.bytes, a.now, a.bytes_window_ms, a.budget, a.token .. ':' .. a.size, a.size)
    if not fits then return {'bytes', since} end
  end
  return false, count, oldest
end
"""

# The head of a script that does its work only once its request is admitted: it takes
# the admission's JSON as ARGV[1] (removed, so the script's own ARGV keep their places),
# returns the refusal as admit() made it, and otherwise goes on with admitted_count and
# admitted_oldest for its reply ({'ok', admitted_count, admitted_oldest, ...}).
ADMITTED = ADMIT_LUA + """
local refusal, admitted_count, admitted_oldest = admit(cjson.decode(table.remove(ARGV, 1)))
if refusal then return refusal end
"""

_ADMIT = ADMITTED + """
return {'ok', admitted_count, admitted_oldest}
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


@dataclass(frozen=True, slots=True)
class Admission:
    """What one request must pass before it acts (ADMIT_LUA says in which order).

    Made once per request: its token, and so a retry of it, counts once.
    """

    ip: str
    counted: bool  # False for a whitelisted address: counted nowhere (its nonces still are)
    limit: Limit | None = None  # the action's budget
    agent_id: str | None = None
    nonce: str | None = None  # a signed request's nonce, spent by passing
    size: int | None = None  # a message's body bytes, charged to the agent's byte budget
    token: str = field(default_factory=rediskit.token)
    now_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @classmethod
    def nonce_only(cls, agent_id: str, nonce: str) -> Admission:
        """A signed request's nonce alone (its other checks passed, or not its to pass)."""
        return cls(ip="", counted=False, agent_id=agent_id, nonce=nonce)

    def charging(self, size: int) -> Admission:
        """This admission, also charging ``size`` message bytes (when counted)."""
        return replace(self, size=size) if self.counted else self

    @property
    def checks_nothing(self) -> bool:
        return not self.counted and self.nonce is None

    @property
    def window_key(self) -> str | None:
        limit = self.limit
        if limit is None:
            return None
        if limit.scope == "ip" or (limit.scope == "agent_or_ip" and self.agent_id is None):
            return f"ratelimit:ip:{self.ip}:{limit.endpoint}:{limit.window_s}"
        assert self.agent_id is not None, f"{limit.endpoint} needs an authenticated agent"
        return f"ratelimit:agent:{self.agent_id}:{limit.endpoint}:{limit.window_s}"

    def spec(self) -> bytes:
        """The JSON ADMIT_LUA reads."""
        if self.checks_nothing:
            return b"{}"
        spec: dict[str, object] = {"token": self.token, "now": self.now_ms}
        if self.nonce is not None:
            assert self.agent_id is not None, "a nonce is an agent's"
            spec.update(nonce=nonce_key(self.agent_id, self.nonce), nonce_ttl=NONCE_TTL_S)
        if self.counted:
            spec["blocked"] = blocked_key(self.ip)
            if self.limit is not None:
                spec.update(window=self.window_key, window_ms=self.limit.window_s * 1000, limit=self.limit.requests)
            if self.size is not None:
                assert self.agent_id is not None, "the byte budget is an agent's"
                spec.update(bytes=f"msgbytes:{self.agent_id}", bytes_window_ms=BYTE_WINDOW_MS,
                            budget=BYTE_BUDGET, size=self.size)
        return orjson.dumps(spec)

    def untouched(self) -> Quota | None:
        """The full budget, for a request that is not counted."""
        if self.limit is None:
            return None
        return Quota(self.limit.requests, self.limit.requests, int(time.time()) + self.limit.window_s)


def blocked_key(ip: str) -> str:
    return f"blocked:ip:{ip}"


class Limiter:
    def __init__(self, redis: aioredis.Redis, lane: Lane, *, auto_block: bool):
        self.redis = redis
        self.auto_block = auto_block
        self._admit = lane.script(_ADMIT)  # every request's: over the lane
        self._violation = redis.register_script(_VIOLATION)
        self._refusal = redis.register_script(_REFUSAL)

    async def admit(self, admission: Admission) -> Quota | None:
        """Pass ``admission``, in one round trip (none when nothing is checked): the
        budget left, or the refusal raised (``conclude``)."""
        if admission.checks_nothing:
            return admission.untouched()
        verdict = await timed(self._admit(args=[admission.spec()]))
        return await self.conclude(admission, verdict)

    async def conclude(self, admission: Admission, verdict: list) -> Quota | None:
        """What ADMIT_LUA's verdict means: the budget left (None without an action), or
        403 (blocked), 401 (nonce used) or 429 (a budget spent), counted as SPEC §5 says."""
        outcome, ip, agent_id = verdict[0], admission.ip, admission.agent_id
        if outcome == b"blocked":
            metrics.BLOCKED_REQUESTS.labels(reason="ip_blocked").inc()
            log.warning("blocked IP attempted request", extra={"event": "blocked_request", "ip": ip})
            raise Blocked()
        if outcome == b"nonce":
            raise Unauthorized(NONCE_USED)
        if outcome == b"bytes":
            reset_ms = int(verdict[1]) + BYTE_WINDOW_MS
            quota = Quota(BYTE_BUDGET, 0, math.ceil(reset_ms / 1000))
            await self._refuse("message_bytes", ip, agent_id, quota, reset_ms - admission.now_ms)
        limit = admission.limit
        if limit is None:
            return None
        if not admission.counted:
            return admission.untouched()
        count, oldest = int(verdict[1]), int(verdict[2])
        reset_ms = oldest + limit.window_s * 1000
        quota = Quota(limit.requests, max(0, limit.requests - count), math.ceil(reset_ms / 1000))
        if outcome == b"window":
            await self._refuse(limit.endpoint, ip, agent_id, quota, reset_ms - admission.now_ms)
        return quota

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
