"""Private-room keys: hashed at creation, checked without letting guesses cost the service.

bcrypt is slow on purpose (about 70 ms at cost 10), which makes each check a lever
for whoever sends keys. So:

- a (room, key) pair is remembered once checked, right or wrong: rooms never change
  their key, so repeating a key never costs a second bcrypt on this instance;
- bcrypt runs on a small pool of its own, never on the default executor, in threads
  of lower scheduling priority, so the event loop gets the CPU first; when that pool's
  queue is full a check is refused at once (503 with Retry-After) instead of waiting
  in line;
- a new wrong key is a guess: a client may make ``KEY_GUESSES_PER_IP`` and a room
  may receive ``KEY_GUESSES_PER_ROOM`` per five minutes, counted in Redis for every
  instance. A check made while either is spent is refused with 429 before any bcrypt
  runs, and counts toward the client's violations like any refusal. A right key
  costs no guess.

REST (``X-AICQ-Room-Key``) and every streaming transport check keys here, through
``ChatService.room``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from aicq import validation
from aicq.cache import LRU
from aicq.errors import Forbidden, Unavailable
from aicq.limits import KEY_GUESS_WINDOW_S, KEY_GUESSES_PER_IP, KEY_GUESSES_PER_ROOM, Limiter, Quota
from aicq.models import Room
from aicq.rediskit import timed

BCRYPT_ROUNDS = 10
BCRYPT_WORKERS = 1
BCRYPT_NICENESS = 10  # CFS weight 110 against the loop's 1024: the loop comes first
# Checks running or waiting for the pool; past this a check is refused, not queued.
BCRYPT_QUEUE = 8
BUSY_RETRY_AFTER_S = 1
CHECKED_PAIRS = 10_000

# KEYS: guesses by the client, guesses at the room   ARGV: now_ms, window_ms, client
# limit, room limit, member → {1} admitted (the attempt counts until it proves right),
# or {0, which (1 client, 2 room), oldest guess in that window}
_GUESS = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[2 + i]) then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {0, i, tonumber(oldest[2] or now)}
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[i], window)
end
return {1}
"""


def _yield_to_the_loop() -> None:
    """Lower this worker thread's priority (Linux nices threads one by one)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BCRYPT_NICENESS)
    except (AttributeError, OSError):  # another OS, or not allowed: same priority then
        pass


class RoomKeys:
    def __init__(self, limiter: Limiter):
        self.limiter = limiter
        self._guess = limiter.redis.register_script(_GUESS)
        self._pool = ThreadPoolExecutor(max_workers=BCRYPT_WORKERS, thread_name_prefix="aicq-bcrypt",
                                        initializer=_yield_to_the_loop)
        self._busy = 0  # checks running or queued on the pool
        self._checked: LRU = LRU(CHECKED_PAIRS)  # (room id, sha256 of key) -> right?

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, key: str) -> str:
        """The bcrypt hash a new private room stores (creations are rare: they wait their turn)."""
        loop = asyncio.get_running_loop()
        hashed = await loop.run_in_executor(self._pool, bcrypt.hashpw, key.encode(), bcrypt.gensalt(BCRYPT_ROUNDS))
        return hashed.decode()

    async def check(self, room: Room, key: object, *, ip: str, whitelisted: bool) -> None:
        """Pass if ``key`` opens the private ``room``.

        Raises:
            Forbidden: no key, or a wrong one (403).
            RateLimited: the client's or the room's guesses are spent (429, Retry-After).
            Unavailable: the bcrypt pool is saturated (503, Retry-After).
        """
        if not key or not isinstance(key, str) or len(key.encode()) > validation.MAX_ROOM_KEY_BYTES:
            raise Forbidden("this room is private: X-AICQ-Room-Key required")
        fingerprint = (room.id, hashlib.sha256(key.encode()).digest())
        known = self._checked.get(fingerprint)
        if known is None:
            assert room.key_hash, "private rooms always have a key hash"
            known = await self._verify(room, key, ip=ip, whitelisted=whitelisted)
            self._checked.put(fingerprint, known)
        if not known:
            raise Forbidden("invalid room key")

    async def _verify(self, room: Room, key: str, *, ip: str, whitelisted: bool) -> bool:
        if self._busy >= BCRYPT_QUEUE:
            raise self._saturated()
        guess = None if whitelisted else await self._start_guess(room, ip)
        if self._busy >= BCRYPT_QUEUE:  # filled up while Redis answered
            await self._forget_guess(room, ip, guess)
            raise self._saturated()
        self._busy += 1
        try:
            loop = asyncio.get_running_loop()
            right = await loop.run_in_executor(self._pool, bcrypt.checkpw, key.encode(), room.key_hash.encode())
        except BaseException:
            await self._forget_guess(room, ip, guess)
            raise
        finally:
            self._busy -= 1
        if right:
            await self._forget_guess(room, ip, guess)
        return right

    async def _start_guess(self, room: Room, ip: str) -> str:
        """Count an attempt as a guess (until it proves right); 429 when one is spent."""
        member = uuid.uuid4().hex
        now = int(time.time() * 1000)
        window_ms = KEY_GUESS_WINDOW_S * 1000
        answer = await timed(self._guess(
            keys=[f"keyguess:ip:{ip}", f"keyguess:room:{room.id}"],
            args=[now, window_ms, KEY_GUESSES_PER_IP, KEY_GUESSES_PER_ROOM, member],
        ))
        if not answer[0]:
            limit = KEY_GUESSES_PER_IP if answer[1] == 1 else KEY_GUESSES_PER_ROOM
            reset_ms = int(answer[2]) + window_ms
            quota = Quota(limit, 0, math.ceil(reset_ms / 1000))
            await self.limiter.refuse("room_key", ip, None, quota, reset_ms - now)
        return member

    async def _forget_guess(self, room: Room, ip: str, member: str | None) -> None:
        if member is not None:
            pipe = self.limiter.redis.pipeline(transaction=False)
            pipe.zrem(f"keyguess:ip:{ip}", member)
            pipe.zrem(f"keyguess:room:{room.id}", member)
            await timed(pipe.execute())

    @staticmethod
    def _saturated() -> Unavailable:
        return Unavailable("too many room key checks at once; try again in a moment",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
