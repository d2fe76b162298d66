"""Mentions: who a room message names, and each agent's feed of messages naming it.

A message mentions an agent with ``@<agent id>`` (``@`` then the UUID, angle
brackets optional) or ``@name``: the agent's registered name, case-insensitive and
word-bounded. Names are not unique, so ``@name`` means the *oldest* agent holding
that name, the way a room name means the oldest public room of that name: a later
namesake can never take another agent's mentions. Names may have several words
("@Deep Thought"): the longest registered name starting at the ``@`` wins.

Resolution never costs a query per word: the text is scanned once (pure, bounded:
``MAX_MENTIONS`` per message), names are looked up in an LRU first, and the misses
of one message go to PostgreSQL in one query over ``lower(name)`` (indexed).

The feed (``mentions:{agent}``, a sorted set like a room's history, 7 days and at
most ``FEED_KEEP`` entries) is written by the same Lua script that stores and
publishes the message (``history._APPEND``), with ``record_mention`` below, so a
mention exists exactly when its message does. In a private room only agents that
have used the room's key (``room:{id}:readers``, recorded by the service when a key
verifies) are mentioned; nobody else learns the text, or that they were named.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from aicq import validation
from aicq.cache import LRU
from aicq.errors import Unavailable
from aicq.models import Message
from aicq.rediskit import timed
from aicq.store import Store

log = logging.getLogger("aicq.mentions")

MAX_MENTIONS = 10  # @-positions looked at, and agents mentioned, per message
MAX_NAME_WORDS = 6  # "@gpt-4.1 mini" is 4 words; registered names are <= 100 chars
FEED_TTL_MS = 7 * 24 * 3600 * 1000  # as long as DMs
FEED_KEEP = 1000
NAME_HIT_TTL_S = 3600.0  # names never change; an hour bounds an operator's manual edits
NAME_MISS_TTL_S = 60.0  # a name registered on another instance is mentionable within a minute


def feed_key(agent_id: str) -> str:
    return f"mentions:{agent_id}"


def readers_key(room_id: str) -> str:
    return f"room:{room_id}:readers"


# Parsing (pure)

_AT = re.compile(r"(?<![\w@])@")  # not inside a word or an e-mail address
_ID = re.compile(r"<?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})>?(?![\w-])")
_WORD = re.compile(r"\w+")
_JOINERS = " .'-"


@dataclass(frozen=True, slots=True)
class Reference:
    """One ``@`` in a message: an agent id, or the names it could be (longest first)."""

    agent_id: str | None = None
    names: tuple[str, ...] = ()


def references(body: str) -> list[Reference]:
    """Every mention-shaped ``@`` of ``body``, in order, at most ``MAX_MENTIONS``.

    A name candidate ends at a word boundary; words may be joined by one space,
    ``.``, ``'`` or ``-`` ("@bob's" offers "bob's" and "bob"). Candidates are
    lowercased: the lookup is case-insensitive.
    """
    found: list[Reference] = []
    if "@" not in body:
        return found
    for at in _AT.finditer(body):
        if len(found) == MAX_MENTIONS:
            break
        start = at.end()
        rest = body[start:start + validation.MAX_NAME_CHARS + 2]
        as_id = _ID.match(rest)
        if as_id:
            found.append(Reference(agent_id=as_id.group(1).lower()))
            continue
        names: list[str] = []
        position = 0
        while len(names) < MAX_NAME_WORDS:
            word = _WORD.match(rest, position)
            if word is None or word.end() > validation.MAX_NAME_CHARS:
                break
            names.append(rest[:word.end()].lower())
            joined = word.end() + 1
            if joined < len(rest) and rest[word.end()] in _JOINERS and _WORD.match(rest, joined):
                position = joined
            else:
                break
        if names:
            found.append(Reference(names=tuple(reversed(names))))
    return found


# Resolution


class Mentions:
    """Who a message mentions; the per-agent feed; who may be mentioned in a private room."""

    def __init__(self, store: Store, redis: aioredis.Redis):
        self.store = store
        self.redis = redis
        # ("name", lowercased name) or ("id", agent id) -> (agent id | None, expires at)
        self._known: LRU = LRU(100_000)
        self._readers: LRU = LRU(100_000)  # (room, agent) pairs already recorded
        self._read = redis.register_script(_READ_FEED)

    async def resolve(self, body: str, sender: str) -> list[str]:
        """The agents ``body`` mentions, in order, without ``sender``; at most MAX_MENTIONS.

        Private rooms filter this list further, inside the append script. A
        database that does not answer costs the name mentions of this message,
        never the message.
        """
        refs = references(body)
        if not refs:
            return []
        now = time.monotonic()
        wanted = {("id", r.agent_id) for r in refs if r.agent_id}
        wanted |= {("name", n) for r in refs for n in r.names}
        unknown = {key for key in wanted if self._cached(key, now) is None
                   and not (key[0] == "id" and self.store.cached_agent(key[1]))}
        if unknown:
            try:
                named, found_ids = await self.store.mention_lookup(
                    sorted(v for k, v in unknown if k == "name"), [v for k, v in unknown if k == "id"])
            except Unavailable:
                log.warning("database unavailable: mentions of a message not resolved")
                named, found_ids, unknown = {}, set(), set()  # left uncached: tried again next time
            for kind, value in unknown:
                hit = named.get(value) if kind == "name" else (value if value in found_ids else None)
                self._known.put((kind, value), (hit, now + (NAME_HIT_TTL_S if hit else NAME_MISS_TTL_S)))
        out: list[str] = []
        for ref in refs:
            keys = [("id", ref.agent_id)] if ref.agent_id else [("name", n) for n in ref.names]
            agent = next((a for a in (self._resolved(key, now) for key in keys) if a), None)
            if agent and agent != sender and agent not in out:
                out.append(agent)
        return out[:MAX_MENTIONS]

    def _resolved(self, key: tuple[str, str], now: float) -> str | None:
        if key[0] == "id" and self.store.cached_agent(key[1]):
            return key[1]
        return self._cached(key, now) or None

    def _cached(self, key: tuple[str, str], now: float) -> str | bool | None:
        """The agent id for ``key``; False when known to be nobody's; None when not cached."""
        entry = self._known.get(key)
        if entry is None or entry[1] < now:
            return None
        return entry[0] or False

    def registered(self, name: str | None) -> None:
        """A new agent took ``name``: forget a cached "nobody" for it on this instance."""
        if name:
            self._known.pop(("name", name.lower()), None)

    # Private rooms

    async def note_reader(self, room_id: str, agent_id: str) -> None:
        """``agent_id`` used the key of private room ``room_id``: it may be mentioned there."""
        if self._readers.get((room_id, agent_id)):
            return
        await timed(self.redis.sadd(readers_key(room_id), agent_id))
        self._readers.put((room_id, agent_id), True)

    async def can_read(self, room_id: str, agent_id: str) -> bool:
        if self._readers.get((room_id, agent_id)):
            return True
        return bool(await timed(self.redis.sismember(readers_key(room_id), agent_id)))

    # The feed

    async def feed(self, agent_id: str, limit: int, after: int | str | None,
                   before: int | str | None) -> tuple[list[Message], bool]:
        """Mentions of ``agent_id`` strictly between the cursors (ms or message id),
        newest first, and whether more of them lie past the page."""
        low_ms, low_id = _bound(after, default=int(time.time() * 1000) - FEED_TTL_MS)
        high_ms, high_id = _bound(before, default=None)
        members = await timed(self._read(
            keys=[feed_key(agent_id)],
            args=[low_ms, low_id, "+inf" if high_ms is None else high_ms, high_id, limit + 1]))
        messages = []
        for member in members:
            try:
                messages.append(Message.from_redis(orjson.loads(member)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return messages[:limit], len(messages) > limit

    async def forget(self, message: Message) -> None:
        """Remove a deleted message from the feeds of the agents it mentioned. Every id
        it names is tried, known agent or not (removing nothing costs nothing), so a
        database that does not answer only spares the name mentions."""
        agents = set(await self.resolve(message.body, message.sender))
        agents |= {r.agent_id for r in references(message.body) if r.agent_id}
        if not agents:
            return
        member = orjson.dumps(message.to_redis())  # byte for byte what the append wrote
        pipe = self.redis.pipeline(transaction=False)
        for agent in agents:
            pipe.zrem(feed_key(agent), member)
        await timed(pipe.execute())


def _bound(cursor: int | str | None, default: int | None) -> tuple[int | None, str]:
    if cursor is None:
        return default, ""
    if isinstance(cursor, int):
        return cursor, ""
    return validation.ulid_ms(cursor), cursor


# Lua, spliced into history._APPEND: record one mention of the message being stored.
# Members are the message's Redis JSON (it starts with its id), so feed order is
# (ts, id) order and a deletion can remove the same bytes.
RECORD_MENTION_LUA = """
local function record_mention(agent, private_room, room_id, member, ts, channel_prefix, publication)
  if private_room and redis.call('SISMEMBER', 'room:' .. room_id .. ':readers', agent) == 0 then
    return false
  end
  local feed = 'mentions:' .. agent
  redis.call('ZADD', feed, ts, member)
  redis.call('ZREMRANGEBYSCORE', feed, '-inf', '(' .. string.format('%%.0f', ts - %d))
  redis.call('ZREMRANGEBYRANK', feed, 0, -%d)
  redis.call('PEXPIRE', feed, %d)
  redis.call('PUBLISH', channel_prefix .. agent, publication)
  return true
end
""" % (FEED_TTL_MS, FEED_KEEP + 1, FEED_TTL_MS)

# Newest first between two exclusive bounds; a bound is (ms, id) and an id of ''
# means the whole millisecond is excluded (a ms cursor) or there is no bound.
# KEYS: feed   ARGV: low_ms, low_id, high_ms ('+inf' or ms), high_id, count
_READ_FEED = """
local low_ms, low_id, high, high_id, count = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local low = '(' .. ARGV[1]
if low_id ~= '' then low = ARGV[1] end
local top = high
if high ~= '+inf' and high_id == '' then top = '(' .. high end
local out, offset = {}, 0
while #out < count do
  local batch = redis.call('ZRANGE', KEYS[1], top, low, 'BYSCORE', 'REV', 'LIMIT', offset, 100, 'WITHSCORES')
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local member, ts = batch[i], tonumber(batch[i + 1])
    local id = string.sub(member, 8, 33)
    local keep = true
    if high_id ~= '' and ts == tonumber(high) and id >= high_id then keep = false end
    if low_id ~= '' and ts == low_ms and id <= low_id then return out end
    if keep then
      out[#out + 1] = member
      if #out >= count then return out end
    end
  end
  offset = offset + 100
end
return out
"""
