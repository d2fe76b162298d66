"""Presence: what renewing costs Redis at 10,000 sessions, and what joins, reads and leaves cost.

    python -m bench.presence                      # 10,000 agents, PRESENCE_TTL=30 (a renewal every 10 s)
    python -m bench.presence --sessions 2000 --ttl 6

N registered agents each open one signed WebSocket session to one server and
subscribe to one room (so the room has N members). Redis's own command counters
(INFO commandstats, commands run inside scripts included) are read around each phase:

- idle, with 0 and then N sessions: Redis commands per second, all of them and the
  presence scripts' (renewals are one script per instance per period, so the figure
  should not move with N);
- the joins and the leaves: how many scripts carried them (batching);
- GET /room/{id}/presence of the N-member room: latency, size, and the Redis
  commands it takes (MULTI, two HVALS, EXEC: one round trip).

The stores are embedded and private to the run, so no other client's commands are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import secrets
import threading
import time
from collections import Counter

import httpx
import orjson
import redis
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from aicq.presence_store import SCRIPTS
from bench.common import cpu_seconds, percentile, rss_bytes, servers
from bench.wsload import Subscriber

PRESENCE_SHAS = {hashlib.sha1(script.encode()).hexdigest() for script in SCRIPTS}


class AgentSubscriber(Subscriber):
    """A wsload subscriber whose upgrade is signed, so its session is an agent's."""

    def __init__(self, room: str, agent_id: str, key: Ed25519PrivateKey):
        super().__init__(room, False, [])
        self.agent_id = agent_id
        self.key = key

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
        headers = (f"X-AICQ-Agent: {self.agent_id}\r\nX-AICQ-Nonce: {nonce}\r\nX-AICQ-Timestamp: {ts}\r\n"
                   f"X-AICQ-Signature: {signing.sign(self.key, b'', nonce, ts)}\r\n")
        upgrade_key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {upgrade_key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
        )


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in client.info("commandstats").items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


STOP = "bench-presence-window-ends"


def watch_commands(url: str, started: threading.Event) -> tuple[Counter[str], Counter[str]]:
    """Every command Redis runs until an ``ECHO`` of ``STOP`` (MONITOR), split into the
    presence scripts' (each EVALSHA of one, and the commands it runs inside) and the rest."""
    presence: Counter[str] = Counter()
    other: Counter[str] = Counter()
    in_presence = False
    with redis.Redis.from_url(url).monitor() as monitor:
        started.set()
        while True:
            seen = monitor.next_command()
            words = seen["command"].split(" ", 2)
            name = words[0].lower()
            if name == "echo" and words[1:] == [STOP]:
                return presence, other
            if seen["client_type"] != "lua":  # a command from a client; a script's own come next
                in_presence = name == "evalsha" and len(words) > 1 and words[1] in PRESENCE_SHAS
            (presence if in_presence else other)[name] += 1


async def idle_rates(client: redis.Redis, url: str, seconds: float) -> tuple[float, float, Counter[str], Counter[str]]:
    """(all commands/s, presence commands/s, presence's by command, the rest by command)."""
    started = threading.Event()
    watching = asyncio.ensure_future(asyncio.to_thread(watch_commands, url, started))
    await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(seconds)
    client.echo(STOP)
    presence, other = await watching
    return (sum(presence.values()) + sum(other.values())) / seconds, sum(presence.values()) / seconds, \
        presence, other


def public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


async def register(http: httpx.AsyncClient, count: int) -> list[tuple[str, Ed25519PrivateKey]]:
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    agents = []
    for start in range(0, count, 100):
        chunk = keys[start:start + 100]
        answers = await asyncio.gather(*[http.post("/register", json={"public_key": public(k)}) for k in chunk])
        agents += [(a.json()["id"], k) for a, k in zip(answers, chunk, strict=True)]
    return agents


async def present(http: httpx.AsyncClient, room: str) -> int:
    """Agents in ``room`` as /channels counts them (cheaper to poll than the roster)."""
    channels = (await http.get("/channels", params={"limit": 100})).json()["channels"]
    return next(c.get("present", 0) for c in channels if c["id"] == room)


async def until_present(http: httpx.AsyncClient, room: str, count: int, timeout: float) -> None:
    """Wait until ``count`` agents are in ``room`` (Redis's state: polled, nothing to await)."""
    async with asyncio.timeout(timeout):
        while await present(http, room) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.2)


async def connect(port: int, room: str, agents: list[tuple[str, Ed25519PrivateKey]],
                  batch: int = 100) -> list[AgentSubscriber]:
    loop = asyncio.get_running_loop()
    sessions: list[AgentSubscriber] = []
    for start in range(0, len(agents), batch):
        made = await asyncio.gather(*[
            loop.create_connection(lambda a=a, k=k: AgentSubscriber(room, a, k), "127.0.0.1", port)
            for a, k in agents[start:start + batch]
        ])
        fresh = [protocol for _, protocol in made]
        await asyncio.wait_for(asyncio.gather(*[s.ready for s in fresh]), 60)
        sessions += fresh
    return sessions


async def run(args: argparse.Namespace) -> None:
    period = args.ttl / 3
    with servers(1, PRESENCE_TTL=str(args.ttl), WS_HEARTBEAT="60") as (server,):
        client = redis.Redis.from_url(server.env["REDIS_URL"])
        url, port, pid = server.url, server.port, server.process.pid  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            owner = Ed25519PrivateKey.generate()
            owner_id = (await http.post("/register", json={"public_key": public(owner)})).json()["id"]
            body = orjson.dumps({"name": "presence-bench"})
            nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
            room = (await http.post("/room", content=body, headers={
                "X-AICQ-Agent": owner_id, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
                "X-AICQ-Signature": signing.sign(owner, body, nonce, ts),
                "Content-Type": "application/json"})).json()["id"]

            window = period * args.periods
            print(f"PRESENCE_TTL={args.ttl:g} s: a renewal every {period:g} s; idle windows of {window:g} s", flush=True)
            redis_url = server.env["REDIS_URL"]
            total, presence, mine, rest = await idle_rates(client, redis_url, window)
            print(f"idle, 0 sessions:      {total:7.2f} Redis commands/s; presence's: {presence:5.2f}/s "
                  f"{dict(sorted(mine.items()))}; the rest: {dict(sorted(rest.items()))}", flush=True)

            started = time.perf_counter()
            agents = await register(http, args.sessions)
            print(f"registered {len(agents)} agents in {time.perf_counter() - started:.1f} s", flush=True)

            rss_before, cpu_before = rss_bytes(pid), cpu_seconds(pid)
            before = command_calls(client)
            started = time.perf_counter()
            sessions = await connect(port, room, agents)
            connected = time.perf_counter() - started
            await until_present(http, room, args.sessions, 60)  # every arrival written
            joined = time.perf_counter() - started
            calls = delta(before, command_calls(client))
            print(f"joins: {len(sessions)} signed sessions subscribed in {connected:.1f} s, all in the roster "
                  f"after {joined:.1f} s; {calls.get('evalsha', 0)} scripts in all (presence writes are "
                  f"batched: {calls.get('hsetnx', 0)} holds written); server RSS +"
                  f"{(rss_bytes(pid) - rss_before) / 2**20:.0f} MiB, CPU {cpu_seconds(pid) - cpu_before:.1f} s",
                  flush=True)

            await asyncio.sleep(period)  # let the joins' stragglers settle into the idle window
            total, presence, mine, rest = await idle_rates(client, redis_url, window)
            print(f"idle, {len(sessions)} sessions: {total:7.2f} Redis commands/s; presence's: {presence:5.2f}/s "
                  f"{dict(sorted(mine.items()))}; the rest: {dict(sorted(rest.items()))}", flush=True)
            print(f"  renewals: {mine['evalsha']} scripts in {window:g} s ({mine['evalsha'] / window:.2f} round trips/s, "
                  f"{presence:.2f} commands/s counting those inside); one command per session per period would be "
                  f"{len(sessions) / period:,.0f} commands/s", flush=True)

            timings, size = [], 0
            for _ in range(args.reads):
                t0 = time.perf_counter()
                response = await http.get(f"/room/{room}/presence")
                timings.append(time.perf_counter() - t0)
                size = len(response.content)
                assert len(response.json()["agents"]) == args.sessions
            before = command_calls(client)
            await http.get(f"/room/{room}/presence")
            one = delta(before, command_calls(client))
            one.pop("info", None)
            ms = [t * 1000 for t in timings]
            print(f"read: GET /room/{{id}}/presence of a {args.sessions}-member room: p50 {percentile(ms, 0.5):.1f} ms "
                  f"p99 {percentile(ms, 0.99):.1f} ms, {size / 1024:.0f} KiB; Redis commands for one read, "
                  f"sent in one round trip: {dict(sorted(one.items()))}", flush=True)

            before = command_calls(client)
            started = time.perf_counter()
            for s in sessions:
                s.transport.close()  # type: ignore[union-attr]
            await until_present(http, room, 0, 60 + args.ttl)
            calls = delta(before, command_calls(client))
            print(f"leaves: {len(sessions)} sessions closed, roster empty after {time.perf_counter() - started:.1f} s "
                  f"(grace 5 s included); {calls.get('evalsha', 0)} scripts, {calls.get('publish', 0)} leave events",
                  flush=True)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--ttl", type=int, default=30, help="PRESENCE_TTL in seconds (renewal every TTL/3)")
    parser.add_argument("--periods", type=int, default=3, help="renewal periods per idle window")
    parser.add_argument("--reads", type=int, default=20, help="roster reads timed")
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
