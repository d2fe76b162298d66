"""Presence in Redis: room rosters held by instance leases, agent statuses, and their events.

An instance does not renew an entry per session: it holds *one lease* (its score in
``presence:instances``) and records what it holds under it. Every entry of an
instance lives exactly as long as that lease; whichever live instance next finds the
lease expired removes the dead instance's entries and publishes the leaves. Renewing
is therefore one script per instance per period, whatever the number of sessions.

Keys (``{room}`` is a room UUID, or ``online``: every agent with a live session):

- ``presence:room:{room}``          sorted set agent → since (ms): the roster
- ``presence:room:{room}:holders``  hash agent → how many instances hold it there
- ``presence:room:{room}:entries``  hash agent → its entry as clients get it (JSON
  ``{id, name?, since, status, text?}``), so a roster is read with one HVALS
- ``presence:room:{room}:readers``  hash instance → anonymous readers it holds there
- ``presence:agent:{agent}:rooms``  set of the rooms listing the agent (for status events)
- ``presence:status``               hash agent → ``{"status", "text"?}`` JSON
- ``presence:status:expiry``        sorted set agent → when its chosen TTL ends (ms)
- ``presence:leaving``              sorted set ``{room}|{agent}`` → when its leave is due (ms)
- ``presence:instances``            sorted set instance → lease expiry (ms): the leases
- ``presence:instance:{instance}``  hash ``{room}|{agent}`` → 1, ``{room}|`` → readers

A leave waits out a grace period in ``presence:leaving``: an agent that comes back
in time (a reconnect, a resume on another instance after 1012) was never gone, so
no leave/join pair is published. Every change and the event announcing it happen in
one script, so the events on a room's channel replay the roster exactly. Times are
Redis's clock, so instances' clocks never disagree about a lease.

The scripts derive key names from their arguments (one script may touch many rooms):
AICQ runs on one Redis, never a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from aicq.history import room_channel
from aicq.rediskit import timed

ONLINE = "online"  # the pseudo-room of every agent with a live session
SWEEP_INSTANCES = 8  # dead instances cleared per tick (each in full)
DUE_BATCH = 1000  # due leaves and expired statuses handled per tick

_COMMON = """
local P = 'presence:'
local ONLINE = 'online'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local stamp = clock[1] .. '.' .. string.format('%06d', tonumber(clock[2]))
local channel = ARGV[1]

local function publish(room, event)
  redis.call('PUBLISH', channel .. room, stamp .. '|' .. event)
end

local function split(field)
  local bar = string.find(field, '|', 1, true)
  return string.sub(field, 1, bar - 1), string.sub(field, bar + 1)
end

-- The agent's status as JSON members ('"status":"busy","text":"…"'), online by default.
local function status_members(agent)
  local s = redis.call('HGET', P .. 'status', agent)
  if s then
    local ends = redis.call('ZSCORE', P .. 'status:expiry', agent)
    if not ends or tonumber(ends) > now then return string.sub(s, 2, -2) end
  end
  return '"status":"online"'
end

local function agent_event(kind, room, agent, members)
  return '{"type":"' .. kind .. '","room":"' .. room .. '","agent":{"id":"' .. agent .. '"' .. members .. '}}'
end

-- Renew this instance's lease; true when it had lapsed (or Redis forgot it).
local function renew(instance, lease_ms)
  local previous = redis.call('ZSCORE', P .. 'instances', instance)
  redis.call('ZADD', P .. 'instances', now + lease_ms, instance)
  return (not previous) or tonumber(previous) < now
end

-- The agent is no longer in the room: off the roster, and a leave event.
local function depart(room, agent)
  local roster = P .. 'room:' .. room
  if redis.call('ZREM', roster, agent) == 0 then return end
  redis.call('HDEL', roster .. ':entries', agent)
  if room == ONLINE then  -- its last session is gone: so is its status
    redis.call('HDEL', P .. 'status', agent)
    redis.call('ZREM', P .. 'status:expiry', agent)
  else
    redis.call('SREM', P .. 'agent:' .. agent .. ':rooms', room)
    publish(room, agent_event('leave', room, agent, ''))
  end
end

local function hold(instance, room, agent, name)
  local field = room .. '|' .. agent
  if redis.call('HSETNX', P .. 'instance:' .. instance, field, '1') == 0 then return end
  local roster = P .. 'room:' .. room
  if redis.call('HINCRBY', roster .. ':holders', agent, 1) > 1 then return end
  if redis.call('ZREM', P .. 'leaving', field) == 1 then return end  -- back within the grace period
  if redis.call('ZADD', roster, 'NX', now, agent) == 0 or room == ONLINE then return end
  local entry = '{"id":"' .. agent .. '"' .. (name ~= '' and (',"name":' .. name) or '')
    .. ',"since":' .. string.format('%.0f', now) .. ',' .. status_members(agent) .. '}'
  redis.call('HSET', roster .. ':entries', agent, entry)
  redis.call('SADD', P .. 'agent:' .. agent .. ':rooms', room)
  publish(room, '{"type":"join","room":"' .. room .. '","agent":' .. entry .. '}')
end

-- The agent's status changed: its entry in every room it is in, and a status event there.
local function restatus(agent, members)
  for _, room in ipairs(redis.call('SMEMBERS', P .. 'agent:' .. agent .. ':rooms')) do
    local entries = P .. 'room:' .. room .. ':entries'
    local entry = redis.call('HGET', entries, agent)
    if entry then  -- names are JSON strings: their quotes are escaped, so this is the real one
      local cut = string.find(entry, ',"status":', 1, true)
      redis.call('HSET', entries, agent, string.sub(entry, 1, cut) .. members .. '}')
    end
    publish(room, agent_event('status', room, agent, ',' .. members))
  end
end

-- Give up one instance's hold on (room, agent); the last hold going starts the grace
-- period (grace_ms) or, for a dead instance (grace_ms <= 0), ends the presence at once.
local function release(instance, room, agent, grace_ms)
  if redis.call('HDEL', P .. 'instance:' .. instance, room .. '|' .. agent) == 0 then return end
  local holders = P .. 'room:' .. room .. ':holders'
  if redis.call('HINCRBY', holders, agent, -1) > 0 then return end
  redis.call('HDEL', holders, agent)
  if grace_ms <= 0 then
    depart(room, agent)
  else
    redis.call('ZADD', P .. 'leaving', now + grace_ms, room .. '|' .. agent)
  end
end

local function set_readers(instance, room, count)
  local field, readers = room .. '|', P .. 'room:' .. room .. ':readers'
  if count > 0 then
    redis.call('HSET', P .. 'instance:' .. instance, field, count)
    redis.call('HSET', readers, instance, count)
  else
    redis.call('HDEL', P .. 'instance:' .. instance, field)
    redis.call('HDEL', readers, instance)
  end
end

-- Everything an instance holds, released; its lease gone.
local function retire(instance, grace_ms)
  local held = redis.call('HGETALL', P .. 'instance:' .. instance)
  for i = 1, #held, 2 do
    local room, agent = split(held[i])
    if agent == '' then
      redis.call('HDEL', P .. 'room:' .. room .. ':readers', instance)
    else
      release(instance, room, agent, grace_ms)
    end
  end
  redis.call('DEL', P .. 'instance:' .. instance)
  redis.call('ZREM', P .. 'instances', instance)
end
"""

# ARGV: channel prefix, instance, lease_ms, grace_ms, full (0/1), then records of
# four: 'H' room agent name | 'R' room agent - | 'C' room count -
# full=1: the records are everything the instance holds; whatever else Redis has
# it holding is released (a re-sync after a lapsed lease or a Redis restart).
# → lapsed (0/1)
_APPLY = _COMMON + """
local instance, lease_ms, grace_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lapsed = renew(instance, lease_ms)
if ARGV[5] == '1' then
  local wanted = {}
  for i = 6, #ARGV, 4 do wanted[ARGV[i + 1] .. '|' .. ARGV[i + 2]] = true end
  local held = redis.call('HKEYS', P .. 'instance:' .. instance)
  for _, field in ipairs(held) do
    local room, agent = split(field)
    if agent == '' then
      if not wanted[field] then set_readers(instance, room, 0) end
    elseif not wanted[field] then
      release(instance, room, agent, grace_ms)
    end
  end
end
for i = 6, #ARGV, 4 do
  local op, room, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'H' then hold(instance, room, arg, ARGV[i + 3])
  elseif op == 'R' then release(instance, room, arg, grace_ms)
  else set_readers(instance, room, tonumber(ARGV[i + 3])) end
end
return lapsed and 1 or 0
"""

# The periodic step. ARGV: channel prefix, instance, lease_ms, sweep limit, due limit
# → {lapsed (0/1), more work waiting (0/1)}
_TICK = _COMMON + """
local instance, lease_ms, sweep, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lapsed = renew(instance, lease_ms)
local dead = redis.call('ZRANGEBYSCORE', P .. 'instances', '-inf', '(' .. now, 'LIMIT', 0, sweep)
for _, gone in ipairs(dead) do retire(gone, -1) end
local due = redis.call('ZRANGEBYSCORE', P .. 'leaving', '-inf', now, 'LIMIT', 0, limit)
for _, field in ipairs(due) do
  redis.call('ZREM', P .. 'leaving', field)
  local room, agent = split(field)
  if not redis.call('HGET', P .. 'room:' .. room .. ':holders', agent) then depart(room, agent) end
end
local ended = redis.call('ZRANGEBYSCORE', P .. 'status:expiry', '-inf', now, 'LIMIT', 0, limit)
for _, agent in ipairs(ended) do
  redis.call('ZREM', P .. 'status:expiry', agent)
  redis.call('HDEL', P .. 'status', agent)
  restatus(agent, '"status":"online"')
end
local more = #dead == sweep or #due == limit or #ended == limit
return {lapsed and 1 or 0, more and 1 or 0}
"""

# ARGV: channel prefix, instance, grace_ms → 1
_RETIRE = _COMMON + """
retire(ARGV[2], tonumber(ARGV[3]))
return 1
"""

# ARGV: channel prefix, agent, status JSON ('' = back to online), ttl_ms (0 = none)
# → 0 when the agent has no live session, else 1
_STATUS = _COMMON + """
local agent, status, ttl_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
if not redis.call('ZSCORE', P .. 'room:' .. ONLINE, agent) then return 0 end
if status == '' then
  redis.call('HDEL', P .. 'status', agent)
else
  redis.call('HSET', P .. 'status', agent, status)
end
if ttl_ms > 0 and status ~= '' then
  redis.call('ZADD', P .. 'status:expiry', now + ttl_ms, agent)
else
  redis.call('ZREM', P .. 'status:expiry', agent)
end
restatus(agent, status_members(agent))
return 1
"""

# Every presence script, for tools that tell its Redis work from the rest (bench/presence.py).
SCRIPTS = (_APPLY, _TICK, _RETIRE, _STATUS)


def roster_key(room_id: str) -> str:
    return f"presence:room:{room_id}"


@dataclass(frozen=True, slots=True)
class Hold:
    """This instance holds ``agent`` in ``room`` (``name``: its name as JSON, or "")."""

    room: str
    agent: str
    name: str


@dataclass(frozen=True, slots=True)
class Release:
    room: str
    agent: str


@dataclass(frozen=True, slots=True)
class Readers:
    """This instance has ``count`` anonymous readers in ``room`` (0: none)."""

    room: str
    count: int


Change = Hold | Release | Readers


def _records(changes: Iterable[Change]) -> list[str | int]:
    out: list[str | int] = []
    for change in changes:
        if isinstance(change, Hold):
            out += ["H", change.room, change.agent, change.name]
        elif isinstance(change, Release):
            out += ["R", change.room, change.agent, ""]
        else:
            out += ["C", change.room, "", change.count]
    return out


class PresenceStore:
    """The presence scripts, for one instance (``instance``) of the deployment."""

    def __init__(self, redis: aioredis.Redis, *, instance: str, lease_ms: int, grace_ms: int):
        self.redis = redis
        self.instance = instance
        self.lease_ms = lease_ms
        self.grace_ms = grace_ms
        self._channel = room_channel("")
        self._apply = redis.register_script(_APPLY)
        self._tick = redis.register_script(_TICK)
        self._retire = redis.register_script(_RETIRE)
        self._status = redis.register_script(_STATUS)

    async def apply(self, changes: list[Change], *, full: bool = False) -> bool:
        """Apply this instance's changes (renewing its lease); True when the lease had
        lapsed, so Redis may have lost what the instance holds (re-sync with ``full``)."""
        args = [self._channel, self.instance, self.lease_ms, self.grace_ms, "1" if full else "0",
                *_records(changes)]
        return bool(await timed(self._apply(args=args)))

    async def tick(self) -> tuple[bool, bool]:
        """Renew the lease, clear dead instances, publish due leaves and ended statuses.

        Returns (the lease had lapsed, more work is waiting).
        """
        lapsed, more = await timed(self._tick(args=[
            self._channel, self.instance, self.lease_ms, SWEEP_INSTANCES, DUE_BATCH]))
        return bool(lapsed), bool(more)

    async def retire(self) -> None:
        """Release everything this instance holds (leaves after the grace period) and its lease."""
        await timed(self._retire(args=[self._channel, self.instance, self.grace_ms]))

    async def set_status(self, agent_id: str, status: bytes, ttl_ms: int) -> bool:
        """Store (``status`` = b"": clear) and announce an agent's status; False when the
        agent has no live session."""
        return bool(await timed(self._status(args=[self._channel, agent_id, status, ttl_ms])))

    async def roster(self, room_id: str) -> bytes:
        """``{"agents": [{id, name?, since, status, text?}], "readers": n}`` of one room,
        as JSON: one round trip (two reads in MULTI), whatever the room's size."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hvals(f"{roster_key(room_id)}:entries")
        pipe.hvals(f"{roster_key(room_id)}:readers")
        entries, readers = await timed(pipe.execute())
        return b'{"agents":[%s],"readers":%d}' % (b",".join(entries), sum(int(n) for n in readers))

    async def counts(self, room_ids: list[str]) -> dict[str, tuple[int, int]]:
        """(agents, readers) present in each room, in one round trip."""
        if not room_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for room_id in room_ids:
            pipe.zcard(roster_key(room_id))
            pipe.hvals(f"{roster_key(room_id)}:readers")
        replies = await timed(pipe.execute())
        return {
            room_id: (int(replies[2 * i]), sum(int(n) for n in replies[2 * i + 1]))
            for i, room_id in enumerate(room_ids)
        }
