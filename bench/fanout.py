"""Fan-out: server CPU per delivery, deliveries/s, publish-to-deliver latency, memory per session.

    python -m bench.fanout                 # N = 1,000 and 5,000, one server; memory at 10,000
    python -m bench.fanout --servers 2     # the same fan-out split over two servers

Messages are posted through the real REST endpoint (~200-byte bodies); the server's
own CPU (utime + stime from /proc) is divided by the deliveries the subscribers saw.
Latency is reported twice: end to end (the poster's clock in the body, read by 50
subscribers: includes the REST round trip and this client), and as the server saw it
(aicq_ws_delivery_latency_seconds: Redis publish until every local session has the
frames; bucket bounds).
The load client runs on the same 2-core machine and costs a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from bench.common import cpu_seconds, cpu_split, percentile, rss_bytes, servers
from bench.wsload import open_subscribers

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
    """Post at ``rate`` messages/s for ``seconds`` (paced, not bursty); returns the count."""
    sent = 0
    async with httpx.AsyncClient(base_url=poster.url, timeout=10) as http:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                body = orjson.dumps({"body": f"{time.time():.6f} {BODY_PAD}"})
                response = await http.post(f"/room/{room}", content=body, headers=poster.signed(body))
                assert response.status_code == 201, response.text
                sent += 1
            await asyncio.sleep(max(0.0, (sent / rate) - (time.perf_counter() - started)))
    return sent


async def run_fanout(urls_ports: list[tuple[str, int, int]], subscribers: int, rate: float,
                     seconds: float, publishers: int = 1, opener: Opener = open_subscribers) -> dict:
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
    cpu_before = [cpu_seconds(pid) for _, _, pid in urls_ports]
    split_before = [cpu_split(pid) for _, _, pid in urls_ports]
    frames_before = sum(s.frames for s in everyone)
    started = time.perf_counter()
    sent = sum(await asyncio.gather(*[publish(p, room, rate / publishers, seconds) for p in posters]))
    expected = frames_before + sent * len(everyone)
    deadline = time.perf_counter() + 30
    # Polls a sum over thousands of protocol objects: cheaper than an event per frame.
    while sum(s.frames for s in everyone) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    cpu = [cpu_seconds(pid) - before for (_, _, pid), before in zip(urls_ports, cpu_before, strict=True)]
    delivered = sum(s.frames for s in everyone) - frames_before
    histograms_after = [delivery_histogram(url) for url, _, _ in urls_ports]
    handoff = [histogram_quantile(histograms_before, histograms_after, q) for q in (0.5, 0.99)]
    split = [tuple(a - b for a, b in zip(cpu_split(pid), before, strict=True))
             for (_, _, pid), before in zip(urls_ports, split_before, strict=True)]
    for s in everyone:
        s.transport.close()
    return {"subscribers": len(everyone), "sent": sent, "delivered": delivered, "expected": sent * len(everyone),
            "seconds": elapsed, "cpu": cpu, "split": split, "latencies": latencies, "handoff": handoff}


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


def report(label: str, result: dict) -> None:
    cpu_total = sum(result["cpu"])
    per_delivery = cpu_total / max(1, result["delivered"]) * 1e6
    ms = [v * 1000 for v in result["latencies"]]
    print(f"{label}: N={result['subscribers']:>5}  posted {result['sent']:>4}  delivered "
          f"{result['delivered']:>8}/{result['expected']:<8}  {result['delivered'] / result['seconds']:>9,.0f} deliveries/s  "
          f"server CPU {per_delivery:5.2f} µs/delivery ({', '.join(f'{c:.2f}s' for c in result['cpu'])})  "
          f"latency p50 {percentile(ms, 0.5):.1f} ms p99 {percentile(ms, 0.99):.1f} ms  "
          f"(server publish→hand-off p50 ≤{result['handoff'][0] * 1000:g} ms p99 ≤{result['handoff'][1] * 1000:g} ms)  "
          f"[user/system: {', '.join(f'{u:.2f}/{k:.2f}s' for u, k in result['split'])}]", flush=True)


async def idle_memory(port: int, pid: int, sessions: int) -> None:
    before = rss_bytes(pid)
    idle = await open_subscribers(port, None, sessions, measured=0, latencies=[], batch=500)
    await asyncio.sleep(2)
    after = rss_bytes(pid)
    print(f"memory: {sessions} idle sessions  RSS {before / 2**20:.0f} MiB → {after / 2**20:.0f} MiB  "
          f"= {(after - before) / sessions / 1024:.1f} KiB per session", flush=True)
    for s in idle:
        s.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rates", default="50,20", help="posts/s per size")
    parser.add_argument("--idle", type=int, default=10_000, help="sessions for the memory figure (0: skip)")
    parser.add_argument("--publishers", type=int, default=1,
                        help="concurrent posters sharing the rate (publications then queue up and coalesce)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to cores")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rates = [float(r) for r in args.rates.split(",") if r][:len(sizes)]
    with servers(args.servers, WS_HEARTBEAT="60") as running:
        targets = [(s.url, s.port, s.process.pid) for s in running]
        if args.pin and os.cpu_count() and os.cpu_count() >= 2:
            # Server(s) on the first core, this load client on the last: they stop
            # competing for one core's time and caches (the stores float).
            for _, _, pid in targets:
                os.sched_setaffinity(pid, {0})
            os.sched_setaffinity(0, {os.cpu_count() - 1})

        async def go() -> None:
            for size, rate in zip(sizes, rates, strict=True):
                result = await run_fanout(targets, size, rate, args.seconds, args.publishers)
                report(f"{args.servers} server(s), {args.publishers} publisher(s)", result)
            if args.idle and args.servers == 1:
                await idle_memory(targets[0][1], targets[0][2], args.idle)

        uvloop.run(go())


if __name__ == "__main__":
    main()
