"""Fan-out: server CPU per delivery, deliveries/s, publish-to-deliver latency, memory per session.

    python -m bench.fanout                 # the default scenarios below, one server; memory at 10,000
    python -m bench.fanout --servers 2     # the same fan-out split over two servers
    python -m bench.fanout --sizes 1000 --rates max --publishers 1 --idle 0   # one scenario
    python -m bench.fanout --profile /tmp/prof   # and where the server's time went (pip install py-spy)

Default scenarios, 1,000 subscribers unless said:
- closed loop, 1 publisher: each post waits for the previous one's answer, so each
  publication reaches the hub alone and every delivery is its own write;
- closed loop, 8 publishers ("under load"): publications queue up on the pub/sub
  connection and the hub coalesces them, several frames per write;
- 5,000 subscribers at 20 posts/s.

Messages are posted through the real REST endpoint (~200-byte bodies); the server's
CPU (utime + stime from /proc, of its process and any children: uvicorn's
workers) is divided by the deliveries the subscribers saw (it includes the REST
posts). Beside each figure, the floor: a bare uvloop process
(bench.barewrite) doing the same number of ``transport.write`` calls (the server's
aicq_ws_writes_total) of the same frame bytes (as many frames per write as the
hub coalesced), at the same pace, to as many sockets of this load client.
Memory per idle session is measured on a fresh server each (freed memory would be
reused otherwise): authenticated sessions (one agent each, signed upgrade) and
anonymous ones.
Latency is reported twice: end to end (the poster's clock in the body, read by 50
subscribers: includes the REST round trip and this client), and as the server saw it
(aicq_ws_delivery_latency_seconds: Redis publish until every local session has the
frames; bucket bounds).
The load client runs on the same 2-core machine and costs a core of its own: on a
shared machine, repeat a run and read the spread, and always next to its floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from aicq.protocol import text_frame
from bench.common import (
    cpu_seconds,
    family_cpu,
    percentile,
    py_spy,
    raise_fd_limit,
    rss_bytes,
    servers,
    summarise_profile,
)
from bench.wsload import open_subscribers
from tests.helpers import REPO, free_port

BODY_PAD = "x" * 170  # with the timestamp prefix, ~200-byte bodies
# (port, room, count, measured=, latencies=) → readers with .frames and .transport
Opener = Callable[..., Awaitable[list[Any]]]


class Poster:
    def __init__(self, url: str):
        self.url = url
        self.key = Ed25519PrivateKey.generate()
        public = base64.b64encode(self.key.public_key().public_bytes_raw()).decode()
        self.id = httpx.post(f"{url}/register", json={"public_key": public}).json()["id"]

    def signed(self, body: bytes) -> dict[str, str]:
        nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
        return {"X-AICQ-Agent": self.id, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
                "X-AICQ-Signature": signing.sign(self.key, body, nonce, ts), "Content-Type": "application/json"}

    def create_room(self) -> str:
        body = orjson.dumps({"name": f"fanout-{secrets.token_hex(4)}"})
        return httpx.post(f"{self.url}/room", content=body, headers=self.signed(body)).json()["id"]


async def publish(poster: Poster, room: str, rate: float, seconds: float) -> int:
    """Post at ``rate`` messages/s for ``seconds`` (paced, not bursty; ``inf``: closed
    loop, each post right after the previous answer); returns the count."""
    sent = 0
    async with httpx.AsyncClient(base_url=poster.url, timeout=10) as http:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = sent + 1 if rate == math.inf else int(elapsed * rate) + 1
            while sent < due:
                body = orjson.dumps({"body": f"{time.time():.6f} {BODY_PAD}"})
                response = await http.post(f"/room/{room}", content=body, headers=poster.signed(body))
                assert response.status_code == 201, response.text
                sent += 1
            if rate != math.inf:
                await asyncio.sleep(max(0.0, (sent / rate) - (time.perf_counter() - started)))
    return sent


async def run_fanout(urls_ports: list[tuple[str, int, int]], subscribers: int, rate: float,
                     seconds: float, publishers: int = 1, profile: Path | None = None,
                     opener: Opener = open_subscribers) -> dict:
    """Post for ``seconds`` to one room read by ``subscribers`` readers that ``opener``
    connects (WebSocket sessions by default; bench.sse passes SSE streams)."""
    posters = [Poster(urls_ports[i % len(urls_ports)][0]) for i in range(publishers)]
    poster = posters[0]
    room = poster.create_room()
    latencies: list[float] = []
    share = subscribers // len(urls_ports)
    groups = []
    for index, (_, port, _) in enumerate(urls_ports):
        groups.append(await opener(port, room, share, measured=50 if index == 0 else 0, latencies=latencies))
    everyone = [s for group in groups for s in group]
    await asyncio.sleep(1)  # let subscribe bookkeeping settle before measuring
    histograms_before = [delivery_histogram(url) for url, _, _ in urls_ports]
    writes_before = sum(counter(url, "aicq_ws_writes_total") for url, _, _ in urls_ports)
    # Each server's process and its children: uvicorn's supervisor and its workers.
    cpu_before = [family_cpu(pid) for _, _, pid in urls_ports]
    client_before = time.process_time()
    frames_before = sum(s.frames for s in everyone)
    spy = py_spy(urls_ports[0][2], seconds, profile) if profile else None
    started = time.perf_counter()
    sent = sum(await asyncio.gather(*[publish(p, room, rate / publishers, seconds) for p in posters]))
    publishing = time.perf_counter() - started
    if spy is not None:
        spy.wait(seconds + 30)
    expected = frames_before + sent * len(everyone)
    deadline = time.perf_counter() + 30
    # Polls a sum over thousands of protocol objects: cheaper than an event per frame.
    while sum(s.frames for s in everyone) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    client = time.process_time() - client_before
    used = [cpu_used(before, family_cpu(pid)) for (_, _, pid), before in zip(urls_ports, cpu_before, strict=True)]
    split = [(sum(u for u, _ in server.values()), sum(k for _, k in server.values())) for server in used]
    cpu = [u + k for u, k in split]
    delivered = sum(s.frames for s in everyone) - frames_before
    histograms_after = [delivery_histogram(url) for url, _, _ in urls_ports]
    writes = sum(counter(url, "aicq_ws_writes_total") for url, _, _ in urls_ports) - writes_before
    handoff = [histogram_quantile(histograms_before, histograms_after, q) for q in (0.5, 0.99)]
    sample = next(s.sample for s in everyone if s.sample is not None)
    for s in everyone:
        s.transport.close()
    return {"subscribers": len(everyone), "sent": sent, "delivered": delivered, "expected": sent * len(everyone),
            "seconds": elapsed, "cpu": cpu, "split": split, "latencies": latencies, "handoff": handoff,
            "writes": writes, "publishing": publishing, "frame": text_frame(sample),
            "processes": used, "client": client, "sessions": Counter(getattr(s, "instance", None) for s in everyone)}


def cpu_used(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """(user, system) seconds each process spent between two ``family_cpu`` readings."""
    return {pid: (u - before.get(pid, (0.0, 0.0))[0], k - before.get(pid, (0.0, 0.0))[1])
            for pid, (u, k) in after.items()}


@contextmanager
def bare_writer(pin: bool) -> Iterator[tuple[int, subprocess.Popen]]:
    """A bench.barewrite process on its own port (pinned to the servers' core)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.barewrite", str(port)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"listening"
        if pin:
            os.sched_setaffinity(process.pid, {0})
        yield port, process
    finally:
        process.kill()
        process.wait(5)


async def floor(writer: tuple[int, subprocess.Popen], result: dict) -> tuple[float, int]:
    """The bare-write floor of a fan-out ``result``: (µs of CPU per delivery, frames per write).

    As many sockets as it had subscribers, as many writes as the server made, each
    carrying as many copies of its frame as the hub put in a write on average, paced
    over the same time; each socket's frames counted by this client."""
    port, process = writer
    assert process.stdin is not None and process.stdout is not None
    peers = await open_subscribers(port, None, result["subscribers"], measured=0, latencies=[], batch=500)
    writes = result["writes"] or result["delivered"]  # a server without the counter: one frame per write
    per_write = max(1, round(result["delivered"] / writes))
    rounds = max(1, round(writes / len(peers)))
    await asyncio.sleep(0.5)
    before = cpu_seconds(process.pid)
    process.stdin.write(f"write {rounds} {rounds / result['publishing']} {(result['frame'] * per_write).hex()}\n".encode())
    process.stdin.flush()
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(None, process.stdout.readline)).strip() == b"done"
    wanted = (rounds * per_write + 1) * len(peers)  # and each peer's readiness pong
    deadline = time.perf_counter() + 30
    while sum(p.frames for p in peers) < wanted and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    cpu = cpu_seconds(process.pid) - before
    for p in peers:
        p.transport.close()
    return cpu / (rounds * per_write * len(peers)) * 1e6, per_write


def counter(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def delivery_histogram(url: str) -> dict[float, float]:
    """Cumulative bucket counts of aicq_ws_delivery_latency_seconds, by upper bound."""
    buckets: dict[float, float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aicq_ws_delivery_latency_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_quantile(before: list[dict[float, float]], after: list[dict[float, float]], q: float) -> float:
    """The bucket bound under which a fraction ``q`` of this run's events were handed off."""
    totals: dict[float, float] = {}
    for old, new in zip(before, after, strict=True):
        for bound, count in new.items():
            totals[bound] = totals.get(bound, 0.0) + count - old.get(bound, 0.0)
    bounds = sorted(totals)
    if not bounds or totals[bounds[-1]] == 0:
        return float("nan")
    for bound in bounds:
        if totals[bound] >= q * totals[bounds[-1]]:
            return bound
    return bounds[-1]


def report(label: str, result: dict, floor_us: tuple[float, int] | None = None) -> None:
    """One scenario's line; ``floor_us`` (bare-write CPU per delivery, frames per write)
    when it was measured."""
    cpu_total = sum(result["cpu"])
    per_delivery = cpu_total / max(1, result["delivered"]) * 1e6
    ms = [v * 1000 for v in result["latencies"]]
    floor = f"; floor {floor_us[0]:4.2f} µs/delivery, bare writes of {floor_us[1]} frame(s)" if floor_us else ""
    print(f"{label}: N={result['subscribers']:>5}  posted {result['sent']:>5}  delivered "
          f"{result['delivered']:>8}/{result['expected']:<8}  {result['delivered'] / result['seconds']:>9,.0f} deliveries/s  "
          f"server CPU {per_delivery:5.2f} µs/delivery ({', '.join(f'{c:.2f}s' for c in result['cpu'])}{floor})  "
          f"latency p50 {percentile(ms, 0.5):.1f} ms p99 {percentile(ms, 0.99):.1f} ms  "
          f"(server publish→hand-off p50 ≤{result['handoff'][0] * 1000:g} ms p99 ≤{result['handoff'][1] * 1000:g} ms)  "
          f"[user/system: {', '.join(f'{u:.2f}/{k:.2f}s' for u, k in result['split'])}]", flush=True)


async def register_agents(url: str, count: int) -> list[tuple[str, Ed25519PrivateKey]]:
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async def register(key: Ed25519PrivateKey) -> str:
            public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
            async with limit:
                response = await http.post("/register", json={"public_key": public})
            assert response.status_code == 201, response.text
            return response.json()["id"]
        ids = await asyncio.gather(*[register(key) for key in keys])
    return list(zip(ids, keys, strict=True))


def signed_upgrade(agent: tuple[str, Ed25519PrivateKey]) -> dict[str, str]:
    agent_id, key = agent
    nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
    return {"X-AICQ-Agent": agent_id, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
            "X-AICQ-Signature": signing.sign(key, b"", nonce, ts)}


async def idle_memory(url: str, port: int, pid: int, sessions: int, authenticated: bool) -> None:
    """RSS growth per idle session on a fresh server (agents registered before the first reading)."""
    agents = await register_agents(url, sessions) if authenticated else []
    await asyncio.sleep(1)
    before = rss_bytes(pid)
    # Authenticated upgrades each spend a nonce in Redis: keep a batch under the
    # server's Redis pool (200 connections; past it, a command fails at once).
    idle = await open_subscribers(port, None, sessions, measured=0, latencies=[],
                                  batch=150 if authenticated else 500, headers=(lambda i: signed_upgrade(agents[i])) if authenticated else None)
    await asyncio.sleep(2)
    after = rss_bytes(pid)
    kind = "authenticated" if authenticated else "anonymous"
    print(f"memory: {sessions} idle {kind} sessions  RSS {before / 2**20:.0f} MiB → {after / 2**20:.0f} MiB  "
          f"= {(after - before) / sessions / 1024:.1f} KiB per session", flush=True)
    for s in idle:
        s.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--sizes", default="1000,1000,5000", help="subscribers per scenario")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rates", default="max,max,20", help="posts/s per scenario; max: closed loop")
    parser.add_argument("--publishers", default="1,8,1",
                        help="concurrent posters sharing the rate, per scenario (then publications queue up "
                             "and coalesce)")
    parser.add_argument("--idle", type=int, default=10_000, help="sessions for the memory figures (0: skip)")
    parser.add_argument("--idle-kinds", default="authenticated,anonymous",
                        help="memory figures to take, each on a fresh server")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare write floor")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to cores")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record each scenario's server with py-spy into DIR and summarise it")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rates = [math.inf if r == "max" else float(r) for r in args.rates.split(",") if r]
    publishers = [int(p) for p in args.publishers.split(",") if p]
    publishers += publishers[-1:] * (len(sizes) - len(publishers))
    kinds = [k for k in args.idle_kinds.split(",") if k] if args.idle else []
    assert all(k in ("authenticated", "anonymous") for k in kinds), kinds
    pin = bool(args.pin and os.cpu_count() and os.cpu_count() >= 2)
    raise_fd_limit(max(sizes + [args.idle]) + 1024)
    with servers(args.servers + len(kinds), WS_HEARTBEAT="60") as running, bare_writer(pin) as writer:
        targets = [(s.url, s.port, s.process.pid) for s in running[:args.servers]]
        fresh = running[args.servers:]
        if pin:
            # Server(s) on the first core, this load client on the last: they stop
            # competing for one core's time and caches (the stores float).
            for server in running:
                os.sched_setaffinity(server.process.pid, {0})
            os.sched_setaffinity(0, {os.cpu_count() - 1})

        async def go() -> None:
            for index, (size, rate, posters) in enumerate(zip(sizes, rates, publishers[:len(sizes)], strict=True)):
                profile = None
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profile = args.profile / f"fanout-{index}-N{size}-p{posters}.txt"
                result = await run_fanout(targets, size, rate, args.seconds, posters, profile)
                floor_us = await floor(writer, result) if args.floor else (math.nan, 0)
                mode = "closed loop" if rate == math.inf else f"{rate:g} posts/s"
                report(f"{args.servers} server(s), {posters} publisher(s), {mode}", result, floor_us)
                if profile is not None and profile.exists():
                    summarise_profile(profile)
            for server, kind in zip(fresh, kinds, strict=True):
                await idle_memory(server.url, server.port, server.process.pid, args.idle, kind == "authenticated")

        uvloop.run(go())


if __name__ == "__main__":
    main()
