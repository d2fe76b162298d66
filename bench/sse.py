"""Live delivery without a WebSocket, beside it: server CPU per delivery at N readers.

    python -m bench.sse                        # N = 1,000: WebSocket, SSE, long-poll
    python -m bench.sse --readers 1000 --seconds 10 --rate 20 --poll-rate 2 --idle 5000

One server; one room; posts through the real REST endpoint (~200-byte bodies), as
bench.fanout does, whose posting, pinning and CPU accounting this reuses. In one run:

- WebSocket: N sessions subscribed (bench.fanout's figure, for comparison);
- SSE: N ``GET /events`` streams of the room;
- long-poll: N clients each looping ``GET /room/{id}?after=<last id>&wait=30``.

The server's CPU (utime + stime from /proc) is divided by the deliveries the
readers saw (for long-poll also by the answers: a poll that comes back after more
than one post collects several messages in one answer). Latency is post-to-receipt,
read from the poster's clock in the body by 50 readers. ``--idle`` adds the memory
of idle SSE streams. The load client shares the 2-core machine and costs a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from typing import Any

import httpx
import orjson
import uvloop

from bench.common import cpu_seconds, percentile, rss_bytes, servers
from bench.fanout import Poster, publish, report, run_fanout

_BODY_TIME = re.compile(rb'"body":"(\d+\.\d+) ')


class SSEReader(asyncio.Protocol):
    """One ``GET /events`` stream: counts message events; decodes some for latency."""

    def __init__(self, room: str, measure: bool, latencies: list[float]):
        self.room = room
        self.measure = measure
        self.latencies = latencies
        self.buffer = bytearray()
        self.started = False
        self.frames = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(f"GET /events?rooms={self.room} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.started:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self.ready.set_exception(RuntimeError(bytes(self.buffer[:120]).decode()))
                return
            del self.buffer[: end + 4]
            self.started = True
        last = self.buffer.rfind(b"\n\n")
        if last < 0:
            return
        complete = bytes(self.buffer[: last + 2])
        del self.buffer[: last + 2]
        self.frames += complete.count(b"event: message\n")
        if not self.ready.done() and b"event: ready\n" in complete:
            self.ready.set_result(None)
        if self.measure:
            now = time.time()
            self.latencies += [now - float(sent) for sent in _BODY_TIME.findall(complete)]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before ready"))


async def open_sse_readers(port: int, room: str, count: int, measured: int, latencies: list[float],
                           batch: int = 200) -> list[SSEReader]:
    loop = asyncio.get_running_loop()
    readers: list[SSEReader] = []
    for start in range(0, count, batch):
        made = await asyncio.gather(*[
            loop.create_connection(lambda i=i: SSEReader(room, i < measured, latencies), "127.0.0.1", port)
            for i in range(start, min(count, start + batch))
        ])
        new = [protocol for _, protocol in made]
        await asyncio.wait_for(asyncio.gather(*[r.ready for r in new]), 60)
        readers += new
    return readers


class Poller:
    """One long-poll client on a keep-alive connection: re-polls after every answer."""

    def __init__(self, room: str, after: str, measure: bool, latencies: list[float]):
        self.room = room
        self.after = after
        self.measure = measure
        self.latencies = latencies
        self.answers = 0
        self.delivered = 0

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                writer.write(f"GET /room/{self.room}?after={self.after}&wait=30 HTTP/1.1\r\n"
                             f"Host: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:80]
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                messages = orjson.loads(await reader.readexactly(length))["messages"]
                if messages:
                    now = time.time()
                    self.after = messages[-1]["id"]
                    self.answers += 1
                    self.delivered += len(messages)
                    if self.measure:
                        self.latencies += [now - float(m["body"].split(" ", 1)[0]) for m in messages]
        finally:
            writer.close()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def run_longpoll(url: str, port: int, pid: int, readers: int, rate: float, seconds: float) -> dict:
    poster = Poster(url)
    room = poster.create_room()
    await publish(poster, room, 10, 0.1)  # one message to start after
    async with httpx.AsyncClient(base_url=url) as http:
        after = (await http.get(f"/room/{room}?limit=1")).json()["messages"][0]["id"]
    latencies: list[float] = []
    waiting_before = _metric(url, "aicq_longpoll_waiting")
    pollers = [Poller(room, after, i < 50, latencies) for i in range(readers)]
    tasks = [asyncio.create_task(p.run(port)) for p in pollers]
    deadline = time.perf_counter() + 60
    # Every poller must be held before posting starts (the gauge is the server's word).
    while _metric(url, "aicq_longpoll_waiting") < waiting_before + readers:  # noqa: ASYNC110
        assert time.perf_counter() < deadline, "the pollers never all waited"
        await asyncio.sleep(0.1)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    sent = await publish(poster, room, rate, seconds)
    deadline = time.perf_counter() + 30
    while sum(p.delivered for p in pollers) < sent * readers and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"readers": readers, "sent": sent, "delivered": sum(p.delivered for p in pollers),
            "answers": sum(p.answers for p in pollers), "expected": sent * readers, "seconds": elapsed,
            "cpu": cpu, "latencies": latencies}


def report_longpoll(result: dict) -> None:
    ms = [v * 1000 for v in result["latencies"]]
    print(f"long-poll: N={result['readers']:>5}  posted {result['sent']:>4}  delivered "
          f"{result['delivered']:>8}/{result['expected']:<8} in {result['answers']} answers  "
          f"server CPU {result['cpu'] / max(1, result['answers']) * 1e6:6.1f} µs/answer "
          f"({result['cpu'] / max(1, result['delivered']) * 1e6:.1f} µs/delivery, {result['cpu']:.2f}s)  "
          f"post→answer p50 {percentile(ms, 0.5):.1f} ms p99 {percentile(ms, 0.99):.1f} ms", flush=True)


async def idle_sse_memory(port: int, pid: int, streams: int) -> None:
    before = rss_bytes(pid)
    idle = await open_sse_readers(port, "global", streams, measured=0, latencies=[], batch=500)
    await asyncio.sleep(2)
    after = rss_bytes(pid)
    print(f"memory: {streams} idle SSE streams  RSS {before / 2**20:.0f} MiB → {after / 2**20:.0f} MiB  "
          f"= {(after - before) / streams / 1024:.1f} KiB per stream", flush=True)
    for reader in idle:
        assert reader.transport is not None
        reader.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20, help="posts/s for the WebSocket and SSE runs")
    parser.add_argument("--poll-rate", type=float, default=2, help="posts/s for the long-poll run")
    parser.add_argument("--idle", type=int, default=5000, help="idle SSE streams for the memory figure (0: skip)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to cores")
    args = parser.parse_args()
    with servers(1, WS_HEARTBEAT="60") as running:
        server = running[0]
        assert server.process is not None
        target = (server.url, server.port, server.process.pid)
        if args.pin and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(target[2], {0})  # as bench.fanout: server and client apart
            os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1})

        async def go() -> None:
            if args.idle:  # first, while no freed memory is waiting to be reused
                await idle_sse_memory(server.port, target[2], args.idle)
            result: Any = await run_fanout([target], args.readers, args.rate, args.seconds)
            report("WebSocket", result)
            result = await run_fanout([target], args.readers, args.rate, args.seconds, opener=open_sse_readers)
            report("SSE      ", result)
            report_longpoll(await run_longpoll(server.url, server.port, target[2], args.readers,
                                               args.poll_rate, args.seconds))

        uvloop.run(go())


if __name__ == "__main__":
    main()
