"""A bystander's latency while others flood private rooms with wrong keys.

    python -m bench.keyguess [--flooders 32] [--guesses 3000] [--rooms 40]

One server process enforcing limits. The flood, from a process of its own, sends
GET /room/{id} with a new wrong X-AICQ-Room-Key each time, from a fresh client
address each time, spread over many private rooms (each takes 100 guesses per five
minutes), so bcrypt is as busy as the server lets it be. A whitelisted bystander
reads a public room meanwhile. Prints the bystander's latency alone and under the
flood, what the flood was answered, and the server's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import time
from typing import Any

import httpx

from bench.common import LoadResult, cpu_seconds, fire, servers, summary
from tests.helpers import Agent, random_ip

BYSTANDER_IP = "10.99.0.1"


async def bystander(http: httpx.AsyncClient, until: Any) -> list[float]:
    latencies = []
    while not until():
        started = time.perf_counter()
        response = await http.get("/room/global", params={"limit": 5})
        assert response.status_code == 200, response.text
        latencies.append(time.perf_counter() - started)
    return latencies


def guesses(rooms: list[str], count: int) -> list[bytes]:
    return [
        (f"GET /room/{secrets.choice(rooms)} HTTP/1.1\r\nHost: bench\r\nX-Test-Client-IP: {random_ip()}\r\n"
         f"X-AICQ-Room-Key: wrong-{secrets.token_hex(12)}\r\n\r\n").encode()
        for _ in range(count)
    ]


def flood(port: int, requests: list[bytes], concurrency: int, results: Any) -> None:
    outcome = asyncio.run(fire(port, requests, concurrency))
    results.put((outcome.seconds, outcome.statuses))


async def run(flooders: int, count: int, room_count: int) -> None:
    with servers(1, CLIENT_IP_HEADER="X-Test-Client-IP", RATE_LIMIT_WHITELIST="10.99.0.0/16") as (server,):
        async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                     headers={"X-Test-Client-IP": BYSTANDER_IP}) as http:
            owner = await Agent().register(http)
            rooms = [(await owner.create_room(http, key=secrets.token_hex(16)))["id"] for _ in range(room_count)]
            warm = time.perf_counter() + 1
            await bystander(http, lambda: time.perf_counter() > warm)
            calm = time.perf_counter() + 5
            alone = await bystander(http, lambda: time.perf_counter() > calm)

            results: Any = multiprocessing.get_context("spawn").Queue()
            child = multiprocessing.get_context("spawn").Process(
                target=flood, args=(server.port, guesses(rooms, count), flooders, results))
            cpu_before, started = cpu_seconds(server.process.pid), time.perf_counter()
            child.start()
            loaded = await bystander(http, lambda: not child.is_alive())
            child.join()
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(server.process.pid) - cpu_before
            seconds, statuses = results.get()
    outcome = LoadResult(count, seconds, [], statuses)
    print(f"bystander alone          {summary(alone)}  ({len(alone)} reads)")
    print(f"bystander under flood    {summary(loaded)}  ({len(loaded)} reads)")
    print(f"flood: {flooders} connections, {count} guesses in {seconds:.1f} s ({outcome.rate:.0f}/s), "
          f"answers {dict(sorted(statuses.items()))} (403: bcrypt ran)")
    print(f"server CPU during the flood: {cpu / elapsed:.2f} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flooders", type=int, default=32)
    parser.add_argument("--guesses", type=int, default=3000)
    parser.add_argument("--rooms", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(run(args.flooders, args.guesses, args.rooms))


if __name__ == "__main__":
    main()
