"""The REST hot path: server CPU per request, next to a bare Starlette endpoint, one run.

    python -m bench.http_post [--requests 6000] [--concurrency 32] [--profile DIR]

Four figures, each beside its yardstick (bench.bare_app: the same uvicorn settings,
constant JSON):
- signed ``POST /room/{id}`` as a stranger pays it: every limit counted (the blocked-IP
  check, the agent's request window and byte budget, the nonce), each agent within its
  budget (30 posts a minute), clients spread over many addresses (a trusted proxy header);
- the same post from a whitelisted address (nothing counted: the floor of a post);
- anonymous ``GET /room/{id}?limit=50`` of a room of 200-byte messages, each from its
  own address (within the 120/min read budget).
``--profile DIR`` records each AICQ scenario with py-spy (pip install py-spy) and prints
where the server's time went. One server process, the load generator on the same
machine (it costs a core too): on a shared machine, repeat and read the spread.
Beside each AICQ figure, the Redis round trips it cost per request (the server's
aicq_redis_latency_seconds_count; its background work, a few a second, included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from bench.common import LoadResult, cpu_seconds, fire, py_spy, servers, summarise_profile, summary
from tests.helpers import REPO, free_port

IP_HEADER = "X-Bench-Client-IP"
WHITELISTED = "10.255.255.255"  # counted nowhere
POSTS_PER_AGENT = 20  # under the 30-a-minute window and the 32 KB byte budget
READS_PER_ADDRESS = 100  # under the 120-a-minute read budget
BODY = "bench message {} with a little text to carry: " + "x" * 120


class Agent:
    def __init__(self, server_url: str):
        self.key = Ed25519PrivateKey.generate()
        public = base64.b64encode(self.key.public_key().public_bytes_raw()).decode()
        self.id = httpx.post(f"{server_url}/register", json={"public_key": public},
                             headers={IP_HEADER: fresh_address()}).json()["id"]

    def headers(self, body: bytes) -> dict[str, str]:
        nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
        return {"Content-Type": "application/json", "X-AICQ-Agent": self.id, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
                "X-AICQ-Signature": signing.sign(self.key, body, nonce, ts)}


def fresh_address() -> str:
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed_posts(agents: list[Agent], room: str, count: int, *, address: str | None = None) -> list[bytes]:
    """``count`` posts, each agent's in a row from an address of its own (or all from
    ``address``)."""
    requests = []
    for index in range(count):
        turn = index // POSTS_PER_AGENT
        agent = agents[turn % len(agents)]
        body = orjson.dumps({"body": BODY.format(index)})
        headers = {**agent.headers(body), IP_HEADER: address or f"10.1.{turn % 250}.{turn // 250 + 1}"}
        requests.append(raw_request("POST", f"/room/{room}", headers, body))
    return requests


def anonymous_reads(room: str, count: int) -> list[bytes]:
    return [raw_request("GET", f"/room/{room}?limit=50",
                        {IP_HEADER: f"10.2.{index // READS_PER_ADDRESS % 250}.{index // READS_PER_ADDRESS // 250 + 1}"})
            for index in range(count)]


def redis_calls(server_url: str | None) -> float:
    """Redis round trips the server has made so far (aicq_redis_latency_seconds_count)."""
    if server_url is None:
        return 0
    for line in httpx.get(f"{server_url}/metrics").text.splitlines():
        if line.startswith("aicq_redis_latency_seconds_count"):
            return float(line.split()[-1])
    return 0


def measure(name: str, pid: int, port: int, requests: list[bytes], concurrency: int,
            profile: Path | None = None, server_url: str | None = None) -> float:
    """Fire ``requests``; print and return the server's CPU per request (µs)."""
    spy = None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        spy = py_spy(pid, 3600, profile)
        time.sleep(1)  # py-spy attaches
    before, calls_before = cpu_seconds(pid), redis_calls(server_url)
    result: LoadResult = asyncio.run(fire(port, requests, concurrency))
    cpu_us = (cpu_seconds(pid) - before) / result.requests * 1e6
    calls = (redis_calls(server_url) - calls_before) / result.requests
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile when interrupted
        spy.wait(60)
    per_request = f"  Redis round trips {calls:.2f}/req" if server_url else ""
    print(f"{name:<38} {result.rate:6.0f} req/s  {summary(result.latencies)}  "
          f"server CPU {cpu_us:5.0f} µs/req{per_request}  statuses {result.statuses}", flush=True)
    if profile is not None and profile.exists():
        summarise_profile(profile)
    return cpu_us


@contextmanager
def bare_server() -> Iterator[tuple[int, int]]:
    """bench.bare_app on a port of its own: (pid, port)."""
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_app"], cwd=REPO, env={"PORT": str(port), "PATH": ""})
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/room/x")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield bare.pid, port
    finally:
        bare.terminate()
        bare.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each AICQ scenario into DIR")
    args = parser.parse_args()
    n, concurrency = args.requests, args.concurrency

    def profile(name: str) -> Path | None:
        return args.profile / f"http-{name}.txt" if args.profile else None

    with servers(1, RATE_LIMIT_WHITELIST=WHITELISTED, CLIENT_IP_HEADER=IP_HEADER) as (server,):
        pid, port, url = server.process.pid, server.port, server.url
        agents = [Agent(server.url) for _ in range(n // POSTS_PER_AGENT + 30)]
        body = orjson.dumps({"name": f"bench-{secrets.token_hex(4)}"})
        room = httpx.post(f"{server.url}/room", content=body,
                          headers={**agents[0].headers(body), IP_HEADER: fresh_address()}).json()["id"]
        warm, timed_agents = agents[:25], agents[25:]
        asyncio.run(fire(port, signed_posts(warm, room, 500), concurrency))
        results = {
            "post": measure("aicq signed POST /room/{id}", pid, port,
                            signed_posts(timed_agents, room, n), concurrency, profile("post"), url),
            "whitelisted": measure("aicq signed POST, whitelisted", pid, port,
                                   signed_posts(warm, room, n, address=WHITELISTED), concurrency,
                                   profile("post-whitelisted"), url),
            "read": measure("aicq anonymous GET /room/{id}?limit=50", pid, port,
                            anonymous_reads(room, n), concurrency, profile("read"), url),
        }
    with bare_server() as (pid, port):
        plain_post = raw_request("POST", "/room/x", {"Content-Type": "application/json"}, b"{}")
        plain_get = raw_request("GET", "/room/x?limit=50", {})
        asyncio.run(fire(port, [plain_post] * 500, concurrency))
        results["bare_post"] = measure("bare Starlette POST, constant JSON", pid, port, [plain_post] * n, concurrency)
        results["bare_get"] = measure("bare Starlette GET, constant JSON", pid, port, [plain_get] * n, concurrency)
    print(f"\nsigned POST {results['post']:.0f} µs (target ≤ 200), whitelisted {results['whitelisted']:.0f} µs, "
          f"bare POST {results['bare_post']:.0f} µs; anonymous GET {results['read']:.0f} µs (target ≤ 120), "
          f"bare GET {results['bare_get']:.0f} µs")


if __name__ == "__main__":
    main()
