"""Signed POST /room/{id} throughput and latency, next to a bare Starlette endpoint.

    python -m bench.http_post [--requests 6000] [--concurrency 32]

One server process, the load generator on the same machine (it costs a core too).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import subprocess
import sys
import time

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from bench.common import cpu_seconds, fire, servers, summary
from tests.helpers import REPO, free_port


def signed_requests(agents: list[tuple[str, Ed25519PrivateKey]], room: str, count: int) -> list[bytes]:
    requests = []
    for index in range(count):
        agent_id, key = agents[index % len(agents)]
        body = orjson.dumps({"body": f"bench message {index} with a little text to carry"})
        nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
        signature = signing.sign(key, body, nonce, ts)
        requests.append(
            f"POST /room/{room} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-AICQ-Agent: {agent_id}\r\nX-AICQ-Nonce: {nonce}\r\n"
            f"X-AICQ-Timestamp: {ts}\r\nX-AICQ-Signature: {signature}\r\n\r\n".encode() + body
        )
    return requests


def report(name: str, pid: int, result, cpu: float) -> None:  # noqa: ANN001
    print(f"{name:<28} {result.rate:8.0f} req/s  {summary(result.latencies)}  "
          f"server CPU {cpu / result.requests * 1e6:6.0f} µs/req  statuses {result.statuses}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    with servers(1) as (server,):
        agents = []
        for _ in range(50):
            key = Ed25519PrivateKey.generate()
            public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
            agents.append((httpx.post(f"{server.url}/register", json={"public_key": public}).json()["id"], key))
        agent_id, key = agents[0]
        body = orjson.dumps({"name": f"bench-{secrets.token_hex(4)}"})
        nonce, ts = secrets.token_hex(16), str(int(time.time() * 1000))
        headers = {"X-AICQ-Agent": agent_id, "X-AICQ-Nonce": nonce, "X-AICQ-Timestamp": ts,
                   "X-AICQ-Signature": signing.sign(key, body, nonce, ts), "Content-Type": "application/json"}
        room = httpx.post(f"{server.url}/room", content=body, headers=headers).json()["id"]

        asyncio.run(fire(server.port, signed_requests(agents, room, 500), args.concurrency))  # warm up
        requests = signed_requests(agents, room, args.requests)
        pid = server.process.pid
        before = cpu_seconds(pid)
        result = asyncio.run(fire(server.port, requests, args.concurrency))
        report("aicq signed POST /room/{id}", pid, result, cpu_seconds(pid) - before)

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_app"], cwd=REPO, env={"PORT": str(port), "PATH": ""})
    try:
        for _ in range(100):
            try:
                httpx.post(f"http://127.0.0.1:{port}/room/x", content=b"{}")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        plain = [b"POST /room/x HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2\r\n\r\n{}"] * args.requests
        asyncio.run(fire(port, plain[:500], args.concurrency))
        before = cpu_seconds(bare.pid)
        result = asyncio.run(fire(port, plain, args.concurrency))
        report("bare Starlette constant JSON", bare.pid, result, cpu_seconds(bare.pid) - before)
    finally:
        bare.terminate()
        bare.wait()


if __name__ == "__main__":
    main()
