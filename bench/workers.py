"""One port, 1 and 2 worker processes (`aicq serve --workers N`), side by side in one run.

    python -m bench.workers                   # 5,000 subscribers, 1 vs 2 workers, 3 scenarios, 2 rounds
    python -m bench.workers --rounds 3 --rates max --publishers 8   # one scenario

Both servers (WEB_CONCURRENCY=1 and =2) start on the same stores and stay up for
the whole run; the rounds alternate between them (1, 2, 1, 2, ...) so whatever
else this shared machine does hits both alike. Each round is bench.fanout's run:
one room read by 5,000 WebSocket sessions connected to the server's one port
(each connection goes to whichever worker accepts it first; the sessions each
worker got are printed, from the worker pid its hello names), ~200-byte messages
posted through REST to the same port (so to either worker), and:
- deliveries/s: frames the subscribers received / (posting + draining) time;
- end to end p50/p99: the poster's clock in the body, read on arrival by 50 of the
  sessions (wherever they landed); includes the REST round trip and this client;
  beside it, the server's own publish → hand-off p99 (bucket bound, all workers);
- server CPU per delivery: utime + stime of uvicorn's supervisor and of every
  worker (the server's process and its children, from /proc) / deliveries; each
  worker's seconds are printed too, and the cores the servers and this client kept
  busy over the run.

Scenarios, all saturating (the server is always behind, so deliveries/s is the
capacity and latency is mostly the queue in front of it):
- closed loop, 1 publisher: each post waits for the previous answer, which waits
  for a worker busy fanning out; every publication is its own write per session;
- closed loop, 8 publishers: publications queue on the pub/sub connections and
  each hub coalesces them, several frames per write;
- 20 posts/s asked (100,000 deliveries/s), 1 publisher: bench.fanout's 5,000
  scenario; on this machine the deliveries fall behind the posts, and the run
  lasts until the last one arrives (the posts made are printed: they may fall
  behind the pace too).

Nothing is pinned: the 2-core machine runs the servers, Redis, PostgreSQL and this
load client, which wants about a core of its own (what it got is printed as
"client cores"). Two workers therefore share about one core with the stores: the
figures say what a second worker costs and buys on a busy 2-vCPU machine, not what
it would do with the load elsewhere. ``--pin`` puts the servers on the first core
and this client on the last (as bench.fanout does), which measures the split's
overhead on one core.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from contextlib import ExitStack

import httpx
import uvloop

from bench.common import family, percentile, raise_fd_limit, servers
from bench.fanout import run_fanout
from tests.helpers import ServerProcess


def wait_for_workers(server: ServerProcess, count: int, timeout: float = 60) -> None:
    """Until ``count`` distinct workers have answered /health (each request a new connection)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {count} workers answered in {timeout}s")
        seen.add(httpx.get(f"{server.url}/health", timeout=5).json()["instance"])
        time.sleep(0.05)


def worker_shares(server_pid: int, result: dict) -> str:
    """Sessions and CPU seconds of each worker (and the supervisor's CPU, if separate)."""
    sessions: dict[int, int] = {}
    for instance, count in result["sessions"].items():
        suffix = (instance or "").rpartition(".")[2]
        sessions[int(suffix) if suffix.isdigit() else server_pid] = count
    cpu = {pid: user + system for pid, (user, system) in result["processes"][0].items()}
    parts = [f"{sessions[pid]} sessions {cpu.get(pid, math.nan):.2f}s" for pid in sorted(sessions)]
    if server_pid not in sessions:
        parts.append(f"supervisor {cpu.get(server_pid, math.nan):.2f}s")
    return ", ".join(parts)


def figures(result: dict) -> dict[str, float]:
    ms = [v * 1000 for v in result["latencies"]]
    return {"deliveries/s": result["delivered"] / result["seconds"], "e2e p50 ms": percentile(ms, 0.5),
            "e2e p99 ms": percentile(ms, 0.99), "µs CPU/delivery": sum(result["cpu"]) / max(1, result["delivered"]) * 1e6,
            # Cores busy over the run: what the servers got, and what this client took.
            "server cores": sum(result["cpu"]) / result["seconds"], "client cores": result["client"] / result["seconds"]}


FORMATS = {"deliveries/s": ",.0f", "µs CPU/delivery": ".2f", "server cores": ".2f", "client cores": ".2f"}


def line(label: str, server_pid: int, result: dict) -> str:
    f = figures(result)
    return (f"{label}: {f['deliveries/s']:>9,.0f} deliveries/s  e2e p50 {f['e2e p50 ms']:6.1f} ms  "
            f"p99 {f['e2e p99 ms']:6.1f} ms  (server hand-off p99 ≤{result['handoff'][1] * 1000:g} ms)  "
            f"{f['µs CPU/delivery']:5.2f} µs CPU/delivery  cores: server {f['server cores']:.2f} "
            f"client {f['client cores']:.2f}  delivered {result['delivered']}/{result['expected']} of "
            f"{result['sent']} posts  [{worker_shares(server_pid, result)}]")


def side_by_side(scenario: str, by_workers: dict[int, list[dict]]) -> None:
    """Median of the rounds, [min–max], one row per worker count."""
    rounds = len(next(iter(by_workers.values())))
    print(f"\n{scenario}: median of {rounds} round(s) [min–max]")
    names = list(figures(next(iter(by_workers.values()))[0]))
    print("workers" + "".join(f"{name:>26}" for name in names))
    for workers, results in by_workers.items():
        cells = []
        for name in names:
            values = [figures(r)[name] for r in results]
            style = FORMATS.get(name, ".1f")
            cells.append(f"{statistics.median(values):{style}} [{min(values):{style}}–{max(values):{style}}]")
        print(f"{workers:>7}" + "".join(f"{cell:>26}" for cell in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each scenario per worker count")
    parser.add_argument("--rates", default="max,max,20", help="posts/s per scenario; max: closed loop")
    parser.add_argument("--publishers", default="1,8,1", help="concurrent posters per scenario")
    parser.add_argument("--pin", action="store_true", help="servers on the first core, this client on the last")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",") if n]
    rates = [math.inf if r == "max" else float(r) for r in args.rates.split(",") if r]
    publishers = [int(p) for p in args.publishers.split(",") if p]
    publishers += publishers[-1:] * (len(rates) - len(publishers))
    raise_fd_limit(args.subscribers + 1024)
    print(f"{os.cpu_count()} cores shared by the servers, Redis, PostgreSQL and this load client "
          f"(about a core of its own){'; pinned' if args.pin else ''}", flush=True)
    with ExitStack() as stack:
        running = {n: stack.enter_context(servers(1, WEB_CONCURRENCY=str(n), WS_HEARTBEAT="60"))[0] for n in counts}
        for n, server in running.items():
            wait_for_workers(server, n)
            if args.pin:
                for pid in family(server.process.pid):
                    os.sched_setaffinity(pid, {0})
        if args.pin:
            os.sched_setaffinity(0, {(os.cpu_count() or 2) - 1})

        async def go() -> None:
            for rate, posters in zip(rates, publishers[:len(rates)], strict=True):
                mode = "closed loop" if rate == math.inf else f"{rate:g} posts/s"
                scenario = f"{args.subscribers:,} subscribers, {posters} publisher(s), {mode}"
                by_workers: dict[int, list[dict]] = {n: [] for n in counts}
                for round_ in range(args.rounds):
                    for n, server in running.items():
                        target = [(server.url, server.port, server.process.pid)]
                        result = await run_fanout(target, args.subscribers, rate, args.seconds, posters)
                        by_workers[n].append(result)
                        print(line(f"{scenario}, {n} worker(s), round {round_ + 1}", server.process.pid, result),
                              flush=True)
                side_by_side(scenario, by_workers)

        uvloop.run(go())


if __name__ == "__main__":
    main()
