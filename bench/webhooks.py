"""Post latency with and without 100 slow webhook endpoints on the room.

    python -m bench.webhooks [--posts 500] [--rounds 3] [--concurrency 16] [--endpoints 100]

One server process (embedded stores unless DATABASE_URL / REDIS_URL are set). Rounds
alternate between a room nobody has a webhook on and a room where each of
``--endpoints`` agents has a webhook whose endpoint accepts the connection and never
answers (every attempt runs into the 5 s timeout, so the worker's slots stay full and
the queue grows by ``endpoints`` entries per post). Printed per round: post rate and
latency, the server's CPU per post, and Redis's time per script call (the append
script XADDs one entry per webhook). The load generator, the slow endpoints and the
server share this machine.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
import redis

from bench.common import cpu_seconds, fire, servers, summary
from bench.http_post import signed_requests
from tests.helpers import Agent


class SlowEndpoints:
    """Accepts every connection, reads the request, never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.read()  # until the sender gives up and closes
        except (asyncio.CancelledError, ConnectionError):
            pass  # the bench is over
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def script_usec(store: redis.Redis) -> tuple[int, int]:
    """(calls, µs) Redis spent in EVALSHA: the append script runs as one."""
    stats = store.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def phase(name: str, server, store: redis.Redis, agents: list[Agent], room: str,  # noqa: ANN001
                args: argparse.Namespace) -> None:
    keys = [(a.id, a.key) for a in agents]
    await fire(server.port, signed_requests(keys, room, 50), args.concurrency)  # warm up
    requests = signed_requests(keys, room, args.posts)
    before, (calls, usec) = cpu_seconds(server.process.pid), script_usec(store)
    result = await fire(server.port, requests, args.concurrency)
    cpu = cpu_seconds(server.process.pid) - before
    calls_after, usec_after = script_usec(store)
    per_script = (usec_after - usec) / max(1, calls_after - calls)
    print(f"{name:<30} {result.rate:6.0f} posts/s  {summary(result.latencies)}  "
          f"server CPU {cpu / result.requests * 1e6:5.0f} µs/post  Redis scripts {per_script:5.0f} µs/call  "
          f"statuses {result.statuses}")


async def main(args: argparse.Namespace) -> None:
    endpoints = SlowEndpoints()
    await endpoints.start()
    with servers(1, WEBHOOK_ALLOW_PRIVATE="1") as (server,):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            posters = [await Agent().register(http, f"poster-{i}") for i in range(20)]
            quiet = (await posters[0].create_room(http))["id"]
            watched = (await posters[0].create_room(http))["id"]
            for i in range(args.endpoints):
                listener = await Agent().register(http, f"listener-{i}")
                response = await listener.request(http, "POST", "/webhooks", {
                    "url": f"http://127.0.0.1:{endpoints.port}/{i}", "events": [f"room:{watched}"]})
                assert response.status_code == 201, response.text
            store = redis.Redis.from_url(server.env["REDIS_URL"])
            # Alternate, so a neighbour's load on this shared machine hits both alike.
            for _ in range(args.rounds):
                await phase("room without webhooks", server, store, posters, quiet, args)
                await phase(f"room with {args.endpoints} slow webhooks", server, store, posters, watched, args)
            await asyncio.sleep(2.5)  # one gauge period: let the worker sample what piled up
            metrics = (await http.get("/metrics")).text
            gauges = [line for line in metrics.splitlines()
                      if line.startswith(("aicq_webhook_queue_depth", "aicq_webhook_deliveries_total"))]
            print(f"queue at the end: stream {store.xlen('webhooks:queue')} entries, "
                  f"retry set {store.zcard('webhooks:retry')}; slow endpoints saw "
                  f"{endpoints.connections} connections")
            for line in gauges:
                print("  " + line)
    await endpoints.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--endpoints", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
