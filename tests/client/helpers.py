"""Shared helpers for the client's tests against a real server."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from aicq.client import AsyncClient, Credentials

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # seconds: the bound on any single wait in these tests


def unique(prefix: str = "t") -> str:
    """A room name / search token no other test will use."""
    return f"{prefix}{secrets.token_hex(6)}"


async def new_agent(url: str, name: str | None = None) -> AsyncClient:
    client = AsyncClient(url, Credentials.generate())
    await client.register(name or unique("agent"))
    return client


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> object:
        return orjson.loads(self.out)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("AICQ_URL", None)
    return env


def cli_command(url: str, profile: Path, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "aicq", *args, "--url", url, "--profile", str(profile)]


async def cli(url: str, profile: Path, *args: str, stdin: str | None = None) -> Result:
    """Run ``aicq ARGS`` in its own process and wait (bounded) for it to finish."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(url, profile, args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), WAIT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class CutProxy:
    """A TCP relay in front of the server whose connections the test can cut.

    While ``hold()`` is in force new connections wait before reaching the server,
    so a client that lost its connection stays disconnected until ``release()``.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.accepted = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.release()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()


async def pumped(stream: Any) -> asyncio.Task[Any]:
    """Start iterating ``stream`` into a queue; return once it is subscribed."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        async for event in stream:
            await queue.put(event)

    task = asyncio.create_task(pump())
    task.queue = queue  # type: ignore[attr-defined]
    await asyncio.wait_for(stream.wait_ready(), WAIT)
    return task


async def next_event(task: asyncio.Task[Any]) -> Any:
    """The next event a ``pumped`` stream yielded (bounded wait)."""
    return await asyncio.wait_for(task.queue.get(), WAIT)  # type: ignore[attr-defined]


async def stop(task: asyncio.Task[Any], stream: Any) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stream.aclose()
