"""Redis as the broker: room history, DM inboxes, search index and live publication.

Keys keep the Go server's names and member format (SPEC §9):

- ``room:{id}:messages``  sorted set, score = ts, member = message JSON
- ``room:{id}:index``     hash id → member (ours; O(1) lookup by id)
- ``dm:{id}:inbox``       sorted set of DM JSON, 7-day retention
- ``search:words:{word}`` sorted set of ``{room_id}:{msg_id}``, score = ts
- ``stats:recent``        list of the newest public members (ours, for /stats)
- ``counts:parked:{db}``  hash room → message_count change not yet in PostgreSQL (ours;
  the append script counts each message here, atomically with storing it, and every
  instance moves the counts to PostgreSQL once a second; ``db`` is a digest of
  DATABASE_URL, so stores sharing one Redis keep theirs apart)
- ``append:done:{token}``, ``delete:done:{token}``, ``counts:done:{token}``,
  ``counts:taken:{token}`` what a write did, for 2 minutes (ours): a command whose
  connection broke is retried once (``rediskit``), and a retried write must answer as
  the first did instead of acting twice.

Every multi-step write (history + index + trim + search + publish) is one Lua
script, so no reader sees half a message and no subscriber misses a stored one.
Members sharing a score sort by their bytes; every member starts with its id,
so Redis order is exactly (ts, id) order.

Messages written by the Go server have no ``index`` entry; they are found by the
ULID's embedded time (ZRANGEBYSCORE around it), still O(log n), never a scan.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson
import redis.asyncio as aioredis
from ulid import ULID

from aicq import metrics, rediskit
from aicq.limits import ADMITTED, Admission
from aicq.mentions import RECORD_MENTION_LUA
from aicq.models import DirectMessage, Message, public_json, spliced
from aicq.rediskit import timed
from aicq.redislane import Lane
from aicq.validation import is_ulid, ulid_ms
from aicq.webhooks.queue import ENQUEUE_LUA

T = TypeVar("T")

MESSAGE_TTL_MS = 24 * 3600 * 1000
DM_TTL_MS = 7 * 24 * 3600 * 1000
RECENT_KEY = "stats:recent"
PARKED_COUNTS_KEY = "counts:parked"
RECENT_KEEP = 50
# Legacy ids carry the Go server's clock; its ts came from a separate call.
LEGACY_SKEW_MS = 2000
TRIM_BATCH = 500
SEARCH_SCAN_BUDGET = 5000


def messages_key(room_id: str) -> str:
    return f"room:{room_id}:messages"


def index_key(room_id: str) -> str:
    return f"room:{room_id}:index"


def inbox_key(agent_id: str) -> str:
    return f"dm:{agent_id}:inbox"


def word_key(word: str) -> str:
    return f"search:words:{word}"


def room_channel(room_id: str) -> str:
    return f"aicq:room:{room_id}"


def dm_channel(agent_id: str) -> str:
    return f"aicq:dm:{agent_id}"


def _parked_key(database: str) -> str:
    return f"{PARKED_COUNTS_KEY}:{database}"


def publication(frame: bytes) -> bytes:
    """What goes over pub/sub: the publish time (for the latency histogram) and the frame."""
    return b"%.6f|" % time.time() + frame


_LOCATE = """
local function locate(zkey, hkey, id, lo, hi)
  local m = redis.call('HGET', hkey, id)
  if m then
    if redis.call('ZSCORE', zkey, m) then return m end
    return false
  end
  local needle = '"id":"' .. id .. '"'
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', zkey, lo, hi)) do
    if string.find(c, needle, 1, true) then return c end
  end
  return false
end
local function reversed(t)
  local r = {}
  for i = #t, 1, -1 do r[#r + 1] = t[i] end
  return r
end
local function id_of(member)
  return string.sub(member, 8, 33)
end
"""

# Store, index, trim, publish — and name the message. Its ts is Redis's clock, never
# behind the room's newest message, and its id a ULID of that ts that sorts after the
# newest id, so the order messages are published in is exactly their (ts, id) order,
# whichever instance posted them and however their clocks disagree.
# It also records the message for the agents it mentions (their feed, a live event on
# their DM channel) and queues it for the webhooks that want it (the room's, the
# mentioned agents'), so a mention or a delivery exists exactly when the message does.
# KEYS: messages, index, recent, parked counts, word keys...
# ARGV: the admission (limits.ADMITTED), random (16 Crockford chars), member head,
#       middle, tail, frame head, middle, tail, ttl_ms, room_id, public (0/1), channel,
#       sender, mention frame head, middle, tail, mentioned agent ids...
# → {'ok', admitted count, oldest, id, ts, mentioned}, or the admission's refusal
_APPEND_BODY = """
local ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
local function encode_time(ms)
  local out = {}
  for i = 10, 1, -1 do
    local digit = ms %% 32
    out[i] = string.sub(ALPHABET, digit + 1, digit + 1)
    ms = (ms - digit) / 32
  end
  return table.concat(out)
end
local function increment(id)
  local chars = {}
  for i = 1, #id do chars[i] = string.sub(id, i, i) end
  for i = #chars, 1, -1 do
    local pos = string.find(ALPHABET, chars[i], 1, true) or 32
    if pos < 32 then
      chars[i] = string.sub(ALPHABET, pos + 1, pos + 1)
      return table.concat(chars)
    end
    chars[i] = '0'
  end
  return table.concat(chars)
end

local zkey, hkey, recent, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- A client retrying after a lost reply sends the same random part: answer it with
-- the message already stored instead of storing it twice.
local done_key = 'append:done:' .. ARGV[1]
local done = redis.call('GET', done_key)
if done then
  local sep = string.find(done, ':', 1, true)
  return {'ok', admitted_count, admitted_oldest, string.sub(done, 1, sep - 1), string.sub(done, sep + 1), 0}
end
local ttl = tonumber(ARGV[8])
local clock = redis.call('TIME')
local ts = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local id
local newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
if #newest == 2 and tonumber(newest[2]) >= ts then
  ts = tonumber(newest[2])
  local last = string.sub(newest[1], 8, 33)
  id = encode_time(ts) .. ARGV[1]
  if id <= last then id = increment(last) end
else
  id = encode_time(ts) .. ARGV[1]
end
local ts_text = string.format('%%.0f', ts)
local member = ARGV[2] .. id .. ARGV[3] .. ts_text .. ARGV[4]
local cutoff = ts - ttl

local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', '(' .. cutoff, 'LIMIT', 0, %d)
for _, m in ipairs(expired) do
  local ok, d = pcall(cjson.decode, m)
  if ok and type(d) == 'table' and d.id then redis.call('HDEL', hkey, d.id) end
  redis.call('ZREM', zkey, m)
end
redis.call('ZADD', zkey, ts, member)
redis.call('HSET', hkey, id, member)
redis.call('PEXPIRE', zkey, ttl)
redis.call('PEXPIRE', hkey, ttl)
redis.call('HINCRBY', counts, ARGV[9], 1)
if ARGV[10] == '1' then
  redis.call('LPUSH', recent, member)
  redis.call('LTRIM', recent, 0, %d)
  local ref = ARGV[9] .. ':' .. id
  for i = 5, #KEYS do
    redis.call('ZADD', KEYS[i], ts, ref)
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. cutoff)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
local published = clock[1] .. '.' .. string.format('%%06d', tonumber(clock[2]))
local event = ARGV[5] .. id .. ARGV[6] .. ts_text .. ARGV[7]
redis.call('PUBLISH', ARGV[11], published .. '|' .. event)
enqueue('room:' .. ARGV[9], event, ts_text, ARGV[12])
local mentioned = 0
if #ARGV >= 16 then
  local mention = ARGV[13] .. id .. ARGV[14] .. ts_text .. ARGV[15]
  for i = 16, #ARGV do
    if record_mention(ARGV[i], ARGV[10] ~= '1', ARGV[9], member, ts, '%s', published .. '|' .. mention) then
      enqueue('mention:' .. ARGV[i], mention, ts_text, '')
      mentioned = mentioned + 1
    end
  end
end
redis.call('SET', done_key, id .. ':' .. ts_text, 'EX', 120)
return {'ok', admitted_count, admitted_oldest, id, ts_text, mentioned}
""" % (TRIM_BATCH, RECENT_KEEP - 1, dm_channel(""))
# Admitted first (limits.ADMITTED): a post is one round trip.
_APPEND = ENQUEUE_LUA + RECORD_MENTION_LUA + ADMITTED + _APPEND_BODY

# KEYS: messages, index   ARGV: id, lo, hi
_FIND = _LOCATE + """
return locate(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
"""

# KEYS: messages, index, recent, done, word keys...
# ARGV: member, id, room_id, channel, publication, ttl_s
_DELETE = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 1 end  -- a retry of a delete that ran
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('LREM', KEYS[3], 0, ARGV[1])
local ref = ARGV[3] .. ':' .. ARGV[2]
for i = 5, #KEYS do redis.call('ZREM', KEYS[i], ref) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('SET', KEYS[4], '1', 'EX', ARGV[6])
return 1
"""

# Newest first, strictly before a cursor.  KEYS: messages, index
# ARGV: cutoff, count, mode ('latest' | 'ms' | 'id'), value, lo, hi, id_ms
_BEFORE = _LOCATE + ADMITTED + """
local function page()
local zkey, hkey = KEYS[1], KEYS[2]
local cutoff, count, mode, value = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if mode == 'latest' then
  return redis.call('ZRANGE', zkey, '+inf', cutoff, 'BYSCORE', 'REV', 'LIMIT', 0, count)
elseif mode == 'ms' then
  return redis.call('ZRANGE', zkey, '(' .. value, cutoff, 'BYSCORE', 'REV', 'LIMIT', 0, count)
end
local m = locate(zkey, hkey, value, ARGV[5], ARGV[6])
if m then
  local r = redis.call('ZRANK', zkey, m)
  if r == 0 then return {} end
  return reversed(redis.call('ZRANGE', zkey, math.max(0, r - count), r - 1))
end
local t = ARGV[7]
local out = {}
for _, c in ipairs(reversed(redis.call('ZRANGE', zkey, t, t, 'BYSCORE'))) do
  if id_of(c) < value then out[#out + 1] = c end
end
for _, c in ipairs(redis.call('ZRANGE', zkey, '(' .. t, cutoff, 'BYSCORE', 'REV', 'LIMIT', 0, count)) do
  out[#out + 1] = c
end
return out
end
return {'ok', admitted_count, admitted_oldest, page()}
"""

# Oldest first, strictly after a cursor.  Same KEYS/ARGV as _BEFORE (mode 'ms' | 'id').
_AFTER = _LOCATE + """
local zkey, hkey = KEYS[1], KEYS[2]
local cutoff, count, mode, value = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if mode == 'ms' then
  return redis.call('ZRANGE', zkey, '(' .. value, '+inf', 'BYSCORE', 'LIMIT', 0, count)
end
local m = locate(zkey, hkey, value, ARGV[5], ARGV[6])
if m then
  local r = redis.call('ZRANK', zkey, m)
  return redis.call('ZRANGE', zkey, r + 1, r + count)
end
local t = ARGV[7]
local out = {}
for _, c in ipairs(redis.call('ZRANGE', zkey, t, t, 'BYSCORE')) do
  if id_of(c) > value then out[#out + 1] = c end
end
for _, c in ipairs(redis.call('ZRANGE', zkey, '(' .. t, '+inf', 'BYSCORE', 'LIMIT', 0, count)) do
  out[#out + 1] = c
end
return out
"""

# KEYS: word keys   ARGV: min score ('(after' or cutoff), limit, room prefix or '', budget
_SEARCH = """
local driver, size = nil, nil
for i, k in ipairs(KEYS) do
  local n = redis.call('ZCARD', k)
  if n == 0 then return {} end
  if size == nil or n < size then driver, size = i, n end
end
local min, limit, prefix, budget = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local out, offset, scanned = {}, 0, 0
while #out < limit and scanned < budget do
  local refs = redis.call('ZRANGE', KEYS[driver], '+inf', min, 'BYSCORE', 'REV', 'LIMIT', offset, 200)
  if #refs == 0 then break end
  for _, ref in ipairs(refs) do
    scanned = scanned + 1
    local ok = prefix == '' or string.sub(ref, 1, #prefix) == prefix
    if ok then
      for i, k in ipairs(KEYS) do
        if i ~= driver and not redis.call('ZSCORE', k, ref) then ok = false; break end
      end
    end
    if ok then
      out[#out + 1] = ref
      if #out >= limit then break end
    end
  end
  offset = offset + 200
end
return out
"""

# KEYS: inbox   ARGV: the admission (limits.ADMITTED), member, ts, cutoff, ttl, channel,
#                publication, recipient
_DM = ENQUEUE_LUA + ADMITTED + """
local function store()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
  -- A retried call finds its DM stored already: publish it only once.
  if redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  enqueue('dm:' .. ARGV[7], string.sub(ARGV[6], string.find(ARGV[6], '|', 1, true) + 1), ARGV[2], '')
  return 1
end
return {'ok', admitted_count, admitted_oldest, store()}
"""


# Where a room stands: its newest id, or, when it has none, the millisecond before
# Redis's now (every later message gets a ts at least that now). KEYS: messages
_POSITION = """
local newest = redis.call('ZRANGE', KEYS[1], -1, -1)
if newest[1] then return string.sub(newest[1], 8, 33) end
local clock = redis.call('TIME')
return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - 1
"""


# KEYS: parked, done   ARGV: room_id, delta, ttl_s
_PARK_COUNT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Moves the parked changes aside under the caller's token, so a retry gets them again.
# KEYS: parked, taken   ARGV: ttl_s
_TAKE_COUNTS = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return redis.call('HGETALL', KEYS[2])
"""

def _random_part() -> str:
    """80 random bits, as the last 16 characters of a ULID.

    Fresh bits every call, never python-ulid's monotonic sequence: within one
    millisecond that sequence hands out consecutive values, and the append script's
    "one more than the room's newest id" then lands on another room's id."""
    return str(ULID.from_bytes(bytes(6) + secrets.token_bytes(10)))[10:]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _decode(members: list[bytes], cutoff: int) -> list[Message]:
    out = []
    for member in members:
        try:
            message = Message.from_redis(orjson.loads(member))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a foreign entry in our key: skip it rather than fail the page
        if message.ts >= cutoff:
            out.append(message)
    return out


def _decode_dms(members: list[bytes]) -> list[DirectMessage]:
    out = []
    for member in members:
        try:
            out.append(DirectMessage.from_redis(orjson.loads(member)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a foreign entry: skip it rather than fail the inbox
    return out


@dataclass(frozen=True, slots=True)
class Admitted(Generic[T]):
    """What a script that passes its request's admission first answered."""

    verdict: list  # the admission's (limits.ADMIT_LUA): ['ok', count, oldest] or the refusal
    value: T | None  # what the script made; None when the admission refused it


def _spec(admission: Admission | None) -> bytes:
    return admission.spec() if admission is not None else b"{}"


@dataclass(frozen=True)
class Page:
    messages: list[bytes]  # each one's REST JSON (models.public_json), newest first
    has_more: bool


class History:
    def __init__(self, redis: aioredis.Redis, lane: Lane):
        self.redis = redis
        # What every request runs goes over the lane: a page, and the append.
        self._append = lane.script(_APPEND)
        self._find = redis.register_script(_FIND)
        self._delete = redis.register_script(_DELETE)
        self._before = lane.script(_BEFORE)
        self._after = redis.register_script(_AFTER)
        self._search = redis.register_script(_SEARCH)
        self._dm = lane.script(_DM)
        self._park_count = redis.register_script(_PARK_COUNT)
        self._take_counts = redis.register_script(_TAKE_COUNTS)
        self._position = redis.register_script(_POSITION)

    @staticmethod
    def cutoff(now_ms: int | None = None) -> int:
        return (now_ms or _now_ms()) - MESSAGE_TTL_MS

    async def append(self, draft: Message, *, public: bool, words: list[str],
                     frame: tuple[bytes, bytes, bytes], database: str, mentioned: Sequence[str] = (),
                     mention_frame: tuple[bytes, bytes, bytes] = (b"", b"", b""),
                     admission: Admission | None = None) -> Admitted[Message]:
        """Name, store, index, trim, count and publish one message, atomically.

        Args:
            draft: the message, its id and ts still slots (``Message.draft``).
            public: index its words and list it in /stats.
            words: its search tokens (ignored for private rooms).
            frame: the live event for it, ``spliced`` around the same slots.
            database: whose parked counts take the room's +1 (``Store.identity``).
            mentioned: agents it mentions (a private room keeps only its readers).
            mention_frame: the ``mention`` event for them, spliced likewise.
            admission: passed first, in the same script (``Limiter.conclude`` reads
                the verdict); the message is stored only when it passes.

        Returns:
            The admission's verdict, and the message as stored, with the id and ts
            Redis gave it (none when the admission was refused).
        """
        room_id = draft.room_id
        keys = [messages_key(room_id), index_key(room_id), RECENT_KEY, _parked_key(database)]
        keys += [word_key(w) for w in words] if public else []
        args = [_random_part(), *spliced(draft.to_redis()), *frame, MESSAGE_TTL_MS,
                room_id, "1" if public else "0", room_channel(room_id), draft.sender,
                *mention_frame, *mentioned]
        reply = await timed(self._append(keys=keys, args=[_spec(admission), *args]))
        if reply[0] != b"ok":
            return Admitted(reply, None)
        if reply[5]:
            metrics.MENTIONS_RECORDED.inc(int(reply[5]))
        return Admitted(reply[:3], dataclasses.replace(draft, id=reply[3].decode(), ts=int(reply[4])))

    async def _locate(self, room_id: str, message_id: str) -> bytes | None:
        at = ulid_ms(message_id)
        member = await timed(self._find(
            keys=[messages_key(room_id), index_key(room_id)],
            args=[message_id, at - LEGACY_SKEW_MS, at + LEGACY_SKEW_MS],
        ))
        return member or None

    async def find(self, room_id: str, message_id: str) -> Message | None:
        member = await self._locate(room_id, message_id)
        found = _decode([member], self.cutoff()) if member else []
        return found[0] if found else None

    async def delete(self, room_id: str, message_id: str, *, words: list[str], frame: bytes) -> Message | None:
        """Remove a message from history, index, search and /stats; publish ``frame``."""
        member = await self._locate(room_id, message_id)
        if member is None:
            return None
        found = _decode([member], self.cutoff())
        if not found:
            return None
        keys = [messages_key(room_id), index_key(room_id), RECENT_KEY, f"delete:done:{rediskit.token()}"]
        keys += [word_key(w) for w in words]
        args = [member, found[0].id, room_id, room_channel(room_id), publication(frame), rediskit.TOKEN_TTL_S]
        removed = await timed(self._delete(keys=keys, args=args))
        return found[0] if removed else None

    def _cursor_args(self, cursor: int | str | None, count: int, cutoff: int) -> list:
        if cursor is None:
            return [cutoff, count, "latest", "", 0, 0, 0]
        if isinstance(cursor, int):
            return [cutoff, count, "ms", cursor, 0, 0, 0]
        at = ulid_ms(cursor)
        return [cutoff, count, "id", cursor, at - LEGACY_SKEW_MS, at + LEGACY_SKEW_MS, at]

    async def before(self, room_id: str, cursor: int | str | None, limit: int, *,
                     admission: Admission | None = None) -> Admitted[Page]:
        """Up to ``limit`` messages strictly before ``cursor`` (ms or id), newest first, as
        REST shows them (a page is what REST reads: no message is decoded to be encoded
        again); ``admission`` is passed first, in the same round trip."""
        cutoff = self.cutoff()
        reply = await timed(self._before(
            keys=[messages_key(room_id), index_key(room_id)],
            args=[_spec(admission), *self._cursor_args(cursor, limit + 1, cutoff)],
        ))
        if reply[0] != b"ok":
            return Admitted(reply, None)
        messages = [json for json, ts in filter(None, map(public_json, reply[3])) if ts >= cutoff]
        return Admitted(reply[:3], Page(messages[:limit], len(messages) > limit))

    async def after(self, room_id: str, cursor: int | str, limit: int) -> list[Message]:
        """Up to ``limit`` retained messages strictly after ``cursor``, oldest first."""
        cutoff = self.cutoff()
        if (ulid_ms(cursor) if isinstance(cursor, str) else cursor) < cutoff:
            # Whatever follows an expired cursor may be expired too, and still
            # waiting to be trimmed: start at the retention edge instead, so a page
            # is never filled with entries that are then dropped.
            cursor = cutoff - 1
        members = await timed(self._after(
            keys=[messages_key(room_id), index_key(room_id)],
            args=self._cursor_args(cursor, limit, cutoff),
        ))
        return _decode(members, cutoff)

    async def position(self, room_id: str) -> int | str:
        """A cursor for "everything from now on" in ``room_id``: its newest message id,
        or, in an empty room, a millisecond no later message can precede."""
        value = await timed(self._position(keys=[messages_key(room_id)]))
        return value.decode() if isinstance(value, bytes) else int(value)

    async def pages_after(self, room_id: str, cursor: int | str, page_size: int) -> AsyncIterator[list[Message]]:
        """Every retained message after ``cursor``, oldest first, ``page_size`` at a time.

        The one walk over history: a WebSocket replay, SSE and long-poll resume, and
        the hub's back-fill after a Redis loss all read through it.
        """
        while True:
            page = await self.after(room_id, cursor, page_size)
            if page:
                yield page
            if len(page) < page_size:
                return
            cursor = page[-1].id

    async def search(self, words: list[str], *, room_id: str | None, after: int | None, limit: int) -> list[Message]:
        cutoff = self.cutoff()
        low = f"({after}" if after is not None and after >= cutoff else str(cutoff)
        refs = await timed(self._search(
            keys=[word_key(w) for w in words],
            args=[low, limit, f"{room_id}:" if room_id else "", SEARCH_SCAN_BUDGET],
        ))
        members = await self._find_many([ref.decode().partition(":")[::2] for ref in refs])
        hits = _decode([m for m in members if m], cutoff)
        hits.sort(key=lambda m: (m.ts, m.id), reverse=True)
        return hits

    async def _find_many(self, refs: list[tuple[str, str]]) -> list[bytes | None]:
        """Locate many (room, id) pairs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for room_id, message_id in refs:
            at = ulid_ms(message_id) if is_ulid(message_id) else 0
            await self._find(keys=[messages_key(room_id), index_key(room_id)],
                       args=[message_id, at - LEGACY_SKEW_MS, at + LEGACY_SKEW_MS], client=pipe)
        return await timed(pipe.execute()) if refs else []

    async def recent(self) -> list[Message]:
        members = await timed(self.redis.lrange(RECENT_KEY, 0, RECENT_KEEP - 1))
        return _decode(members, self.cutoff())

    async def add_dm(self, dm: DirectMessage, frame: bytes, *, admission: Admission | None = None) -> Admitted[bool]:
        """Store a DM in its recipient's inbox and publish it, once ``admission`` passed
        (in the same round trip)."""
        now = _now_ms()
        reply = await timed(self._dm(
            keys=[inbox_key(dm.recipient)],
            args=[_spec(admission), orjson.dumps(dm.to_redis()), dm.ts, now - DM_TTL_MS, DM_TTL_MS,
                  dm_channel(dm.recipient), publication(frame), dm.recipient],
        ))
        if reply[0] != b"ok":
            return Admitted(reply, None)
        return Admitted(reply[:3], True)

    async def dms(self, agent_id: str, limit: int) -> list[DirectMessage]:
        cutoff = _now_ms() - DM_TTL_MS
        members = await timed(self.redis.zrange(
            inbox_key(agent_id), "+inf", cutoff, desc=True, byscore=True, offset=0, num=limit
        ))
        return _decode_dms(members)

    async def dms_after(self, agent_id: str, cursor: tuple[int, str] | int, limit: int) -> list[DirectMessage]:
        """Up to ``limit`` retained DMs to ``agent_id`` after ``cursor`` ((ts, id), or
        unix ms), oldest first. Members sharing a ts sort by id (they start with it)."""
        since_ms = cursor[0] if isinstance(cursor, tuple) else cursor
        members = await timed(self.redis.zrange(
            inbox_key(agent_id), max(since_ms, _now_ms() - DM_TTL_MS), "+inf", byscore=True,
            offset=0, num=limit))
        out = []
        for dm in _decode_dms(members):
            if not isinstance(cursor, tuple) or (dm.ts, dm.id) > cursor:
                out.append(dm)
        return out

    async def park_count(self, database: str, room_id: str, delta: int) -> None:
        """Keep a message_count change for ``database`` until it is moved there."""
        await timed(self._park_count(
            keys=[_parked_key(database), f"counts:done:{rediskit.token()}"],
            args=[room_id, delta, rediskit.TOKEN_TTL_S],
        ))

    async def take_parked_counts(self, database: str) -> dict[str, int]:
        """Every change parked for ``database``, removed atomically (so two instances
        never apply one twice)."""
        pairs = await timed(self._take_counts(
            keys=[_parked_key(database), f"counts:taken:{rediskit.token()}"],
            args=[rediskit.TOKEN_TTL_S],
        ))
        return {pairs[i].decode(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    async def ping(self) -> None:
        await timed(self.redis.ping())
