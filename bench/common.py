"""Shared bench plumbing: stores, server processes, a lean HTTP/1.1 load client, CPU readings."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ServerProcess
from tests.stores import test_stores

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def servers(count: int = 1, **env: str) -> Iterator[list[ServerProcess]]:
    """``count`` `aicq serve` processes on one set of stores (embedded unless URLs are set)."""
    with test_stores() as (database_url, redis_url):
        started = []
        try:
            for index in range(count):
                environment = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                               "RATE_LIMIT_WHITELIST": "127.0.0.1", "LOG_LEVEL": "warning", **env}
                started.append(ServerProcess(environment, Path(f"/tmp/aicq-bench-{index}.log")).start())
            yield started
        finally:
            for server in started:
                server.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def family(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (uvicorn's supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):  # gone between listing and reading
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        found.append(pending.pop())
        pending += children.get(found[-1], [])
    return found


def family_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(utime, stime) of ``pid`` and of each descendant still running."""
    readings = {}
    for member in family(pid):
        try:
            readings[member] = cpu_split(member)
        except OSError:
            continue
    return readings


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit (inherited by the servers started after) to ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        if ceiling < wanted:
            raise SystemExit(f"open files: need {wanted}, the hard limit is {hard} (raise ulimit -Hn)")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def summary(latencies_s: list[float]) -> str:
    ms = [v * 1000 for v in latencies_s]
    return (f"p50 {percentile(ms, 0.5):.2f} ms  p99 {percentile(ms, 0.99):.2f} ms  "
            f"mean {statistics.fmean(ms):.2f} ms")


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def fire(port: int, requests: list[bytes], concurrency: int) -> LoadResult:
    """Send pre-built HTTP/1.1 requests over keep-alive connections; minimal parsing."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return LoadResult(len(requests), time.perf_counter() - started, latencies, statuses)


def py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen:
    """Sample the server's Python stacks while it publishes (py-spy is a bench tool: pip install py-spy)."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "500", "--nonblocking", "--format", "raw", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(path: Path, top: int = 25) -> None:
    """Print where the sampled time went: per function, itself and everything it called."""
    total, own, inclusive = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.rsplit(" (", 1)[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"profile {path} ({total} samples): self | inclusive, % of samples")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f} | {100 * inclusive[frame] / total:5.1f}  {frame}")
