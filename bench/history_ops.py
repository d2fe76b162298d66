"""What a room's size costs the per-message operations (SPEC §9: O(log n), never a scan).

    python -m bench.history_ops [--sizes 1000 100000] [--runs 300] [--no-http]

For each size, one room is filled in the stored layout (sorted set, id index, word sets)
(pipelined), every message carrying a word common to the room plus unique ones.
Then, timed one at a time, ``--runs`` times each:

- delete       ``History.delete`` of a random message (find + delete script)
- find (pid)   ``History.find``: what validating a ``pid`` costs
- find legacy  the same for a Go-written message (no ``room:{id}:index`` entry)
- search 20    ``History.search([common word], limit=20)`` returning 20 hits
- page         ``History.before(room, <id>, 50)``
- GET page     ``GET /room/{id}?before=<id>`` through a running server

The stores are embedded unless ``DATABASE_URL`` / ``REDIS_URL`` are set (then a
fresh database and a random Redis db are used and dropped / flushed after); the
room's keys are deleted at the end either way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import orjson
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ulid import ULID

from aicq import protocol, signing, validation
from aicq.history import History, index_key, messages_key, word_key
from aicq.models import Message
from aicq.redislane import Lane
from bench.common import percentile, servers

FILL_BATCH = 1000
SPAN_MS = 20 * 3600 * 1000  # messages spread over the last 20 h: all retained


@dataclass
class Room:
    id: str
    common: str
    messages: list[Message]


@dataclass
class Figure:
    median_us: float
    p99_us: float


async def timed(runs: int, op: Callable[[int], Awaitable[object]]) -> Figure:
    for i in range(min(20, runs)):  # warm-up: script cache, connection pool
        await op(-1 - i)
    samples = []
    for i in range(runs):
        started = time.perf_counter()
        await op(i)
        samples.append((time.perf_counter() - started) * 1e6)
    return Figure(statistics.median(samples), percentile(samples, 0.99))


async def fill(history: History, room_id: str, size: int) -> Room:
    """``size`` messages, oldest first, spread over the last 24 hours."""
    common = f"common{secrets.token_hex(3)}"
    now = int(time.time() * 1000)
    step = SPAN_MS / size
    messages = []
    for n in range(size):
        ts = now - SPAN_MS + int(n * step)
        body = f"{common} uniq{secrets.token_hex(4)} item{n} group{n % 97} padding text"
        ulid = ULID.from_bytes(ts.to_bytes(6, "big") + secrets.token_bytes(10))
        messages.append(Message(str(ulid), room_id, "bench", body, ts))
    # Written in the stored layout directly (the append script names messages by
    # Redis's clock, and this fill wants 24 hours of spread-out timestamps).
    for start in range(0, size, FILL_BATCH):
        async with history.redis.pipeline(transaction=False) as pipe:
            for m in messages[start:start + FILL_BATCH]:
                member = orjson.dumps(m.to_redis())
                pipe.zadd(messages_key(room_id), {member: m.ts})
                pipe.hset(index_key(room_id), m.id, member)
                for word in validation.tokenize(m.body):
                    pipe.zadd(word_key(word), {f"{room_id}:{m.id}": m.ts})
            await pipe.execute()
    stored = await history.redis.zcard(messages_key(room_id))
    assert stored == size, (stored, size)
    return Room(room_id, common, messages)


async def measure(history: History, room: Room, runs: int, http: httpx.AsyncClient | None) -> dict[str, Figure]:
    rng = random.Random(7)
    pool = room.messages[len(room.messages) // 10:]  # skip the oldest tenth: nothing near the cutoff
    n = runs + 20  # with the warm-up
    assert 2 * n + 50 <= len(pool), f"--runs {runs} is too many for a room of {len(room.messages)}"
    picks = rng.sample(pool, 2 * n)
    doomed, legacy = picks[:n], picks[n:]  # each deleted / un-indexed once
    taken = {m.id for m in picks}
    rest = [m for m in pool if m.id not in taken]
    probes, cursors = rng.choices(rest, k=n), rng.choices(rest, k=n)
    out: dict[str, Figure] = {}

    async def delete(i: int) -> None:
        m = doomed[i]
        words = validation.tokenize(m.body)
        assert await history.delete(room.id, m.id, words=words,
                                    frame=protocol.deleted_event(room.id, m.id)) is not None
    out["delete"] = await timed(runs, delete)

    async def find(i: int) -> None:
        assert await history.find(room.id, probes[i].id) is not None
    out["find (pid check)"] = await timed(runs, find)

    # A Go-written message has no index entry: found by the id's time window instead.
    await history.redis.hdel(index_key(room.id), *[m.id for m in legacy])

    async def find_legacy(i: int) -> None:
        assert await history.find(room.id, legacy[i].id) is not None
    out["find legacy (no index)"] = await timed(runs, find_legacy)

    async def search(i: int) -> None:
        hits = await history.search([room.common], room_id=None, after=None, limit=20)
        assert len(hits) == 20, len(hits)
    out["search, 20 hits"] = await timed(runs, search)

    async def page(i: int) -> None:
        result = await history.before(room.id, cursors[i].id, 50)
        assert result.messages and result.messages[0].ts <= cursors[i].ts
    out["page before=<id> (History)"] = await timed(runs, page)

    if http is not None:
        async def get_page(i: int) -> None:
            response = await http.get(f"/room/{room.id}", params={"before": cursors[i].id})
            assert response.status_code == 200, response.text
            assert len(response.json()["messages"]) == 50
        out["GET /room?before=<id> (HTTP)"] = await timed(runs, get_page)
    return out


async def create_room(http: httpx.AsyncClient) -> str:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    agent = (await http.post("/register", json={"public_key": public})).json()["id"]
    body = orjson.dumps({"name": f"bench-{secrets.token_hex(4)}"})
    nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
    headers = {"X-AICQ-Agent": agent, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
               "X-AICQ-Signature": signing.sign(key, body, nonce, ts),
               "Content-Type": "application/json"}
    response = await http.post("/room", content=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def cleanup(redis: aioredis.Redis, room: Room) -> None:
    keys = [messages_key(room.id), index_key(room.id), word_key(room.common)]
    for start in range(0, len(room.messages), 5000):
        words = {w for m in room.messages[start:start + 5000] for w in validation.tokenize(m.body)}
        keys += [word_key(w) for w in words if w.startswith("uniq")]
    for start in range(0, len(keys), 5000):
        await redis.delete(*keys[start:start + 5000])
    await redis.delete("bench:recent")


async def run(redis_url: str, base_url: str | None, sizes: list[int], runs: int) -> dict[int, dict[str, Figure]]:
    redis = aioredis.Redis.from_url(redis_url)
    history = History(redis, Lane(redis_url))
    results: dict[int, dict[str, Figure]] = {}
    http = httpx.AsyncClient(base_url=base_url, timeout=30) if base_url else None
    try:
        for size in sizes:
            room_id = await create_room(http) if http else str(uuid.uuid4())
            started = time.perf_counter()
            room = await fill(history, room_id, size)
            print(f"filled {size:>7} messages in {time.perf_counter() - started:5.1f} s", flush=True)
            try:
                results[size] = await measure(history, room, runs, http)
            finally:
                await cleanup(redis, room)
    finally:
        if http is not None:
            await http.aclose()
        await redis.aclose()
    return results


def table(results: dict[int, dict[str, Figure]], runs: int) -> str:
    small, large = min(results), max(results)
    lines = [f"{runs} runs each; µs per operation; ratio = median({large:,}) / median({small:,}); "
             "target ≤ 1.5", ""]
    head = (f"{'operation':<30} {'median ' + f'{small:,}':>14} {'p99 ' + f'{small:,}':>12} "
            f"{'median ' + f'{large:,}':>16} {'p99 ' + f'{large:,}':>14} {'ratio':>7}")
    lines += [head, "-" * len(head)]
    for name, a in results[small].items():
        b = results[large][name]
        ratio = b.median_us / a.median_us
        flag = "" if ratio <= 1.5 else "  ← over target"
        lines.append(f"{name:<30} {a.median_us:14.0f} {a.p99_us:12.0f} {b.median_us:16.0f} "
                     f"{b.p99_us:14.0f} {ratio:7.2f}{flag}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1_000, 100_000])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--no-http", action="store_true", help="skip GET /room (no server needed)")
    args = parser.parse_args()
    with servers(1) as (server,):
        base_url = None if args.no_http else server.url
        results = asyncio.run(run(server.env["REDIS_URL"], base_url, args.sizes, args.runs))
    print()
    print(table(results, args.runs))


if __name__ == "__main__":
    main()
