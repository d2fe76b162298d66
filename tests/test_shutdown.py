"""SIGTERM ends the process within the drain budget, whatever it is doing (shutdown.py):
a rolling deploy must never wait for SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from aicq import shutdown
from tests.helpers import REPO, free_port, new_agent, recv_json, recv_until, until_longpolls_wait
from tests.sse_support import sse

# Far below the drain budget (30 s): nothing here waits for a request to drain.
EXIT_WITHIN_S = 15.0


# Background tasks


async def test_a_task_that_swallows_a_cancel_is_cancelled_again() -> None:
    """What asyncio.wait_for does on Python 3.11 (redis-py awaits every command
    through it) when a cancel arrives as the awaited thing completes."""
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await shutdown.cancel_and_wait(task, timeout=2)
    assert task.cancelled() and swallowed


async def test_a_loop_around_wait_for_stops_even_if_woken_as_it_is_cancelled() -> None:
    wake = asyncio.Event()

    async def keeper() -> None:
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 10)

    task = asyncio.create_task(keeper())
    await asyncio.sleep(0.01)
    wake.set()  # the event the loop waits for, and the cancel, in the same breath
    assert await shutdown.cancel_and_wait(task, timeout=2)


async def test_a_task_that_never_stops_is_abandoned_in_time(caplog: pytest.LogCaptureFixture) -> None:
    let_go = False

    async def deaf() -> None:
        while not let_go:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    started = time.monotonic()
    assert not await shutdown.cancel_and_wait(task, timeout=0.3)
    assert time.monotonic() - started < 2
    assert "task deaf did not stop when cancelled" in caplog.text and "in deaf" in caplog.text
    let_go = True
    task.cancel()
    await task


async def test_steps_share_one_deadline_and_name_the_one_that_hangs(caplog: pytest.LogCaptureFixture) -> None:
    ran = []

    async def quick(name: str) -> None:
        ran.append(name)

    steps = shutdown.Steps(budget=0.5)
    started = time.monotonic()
    await steps.run("first", quick("first"))
    await steps.run("stuck", asyncio.sleep(60))
    await steps.run("last", quick("last"))  # still runs: a floor of its own
    assert time.monotonic() - started < 2 and ran == ["first", "last"]
    assert "shutdown: stuck did not finish in time" in caplog.text


# The watchdog

_HANGS_ON_SIGTERM = """
import signal, sys, time
from aicq import shutdown
signal.signal(signal.SIGTERM, lambda *_: None)  # stands for uvicorn's: starts a drain that hangs
with shutdown.armed_on_signals(shutdown.Watchdog(0.5)):
    print("ready", flush=True)
    time.sleep(60)
"""


def test_the_watchdog_ends_a_process_whose_shutdown_hangs() -> None:
    process = subprocess.Popen([sys.executable, "-c", _HANGS_ON_SIGTERM], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(1)  # not armed until a signal: still running
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 1
        out = process.stdout.read()
        assert "shutdown overran its 0.5 s budget" in out and 'File "<string>", line 7' in out  # where it hung
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# Real servers


class BlackHole:
    """A webhook receiver that accepts connections and reads, but never answers."""

    def __init__(self) -> None:
        self._arrived = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> BlackHole:
        self._server = await asyncio.start_server(self._swallow, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self._arrived.set()
        while await reader.read(65536):
            pass

    async def wait_for_connection(self, timeout: float = 15) -> None:
        await asyncio.wait_for(self._arrived.wait(), timeout)

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = await BlackHole().start()
    yield hole
    await hole.stop()


async def _sigterm(server) -> tuple[asyncio.Future[int | None], float]:
    """Send SIGTERM; (the exit code to come, when it was sent)."""
    stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, signal.SIGTERM, 40)
    return stopping, time.monotonic()


async def test_sigterm_exits_in_time_with_deliveries_streams_and_polls_in_flight(start_server, black_hole) -> None:
    """Webhook attempts hanging on a receiver that never answers, others refused, an
    event stream, a waiting long-poll and a WebSocket session, all at once."""
    doomed = start_server()
    async with httpx.AsyncClient(base_url=doomed.url, timeout=10) as http:
        poster = await new_agent(http)
        room = (await poster.create_room(http))["id"]
        closed_port = free_port()  # nobody listens there
        for _ in range(3):  # five webhooks per agent at most
            owner = await new_agent(http)
            for i in range(5):
                url = f"http://127.0.0.1:{black_hole.port if i % 2 else closed_port}/hook/{i}"
                response = await owner.request(http, "POST", "/webhooks", {"url": url, "events": [f"room:{room}"]})
                assert response.status_code == 201, response.text
        for i in range(20):
            last = (await poster.post(http, room, f"to the hooks {i}")).json()
        await black_hole.wait_for_connection()

        async with connect(doomed.ws_url) as ws, sse(http, f"/events?rooms={room}") as stream:
            await recv_json(ws)
            await ws.send(orjson.dumps({"op": "subscribe", "room": room, "ref": "s"}).decode())
            await recv_until(ws, lambda f: f.get("ref") == "s")
            polling = asyncio.create_task(http.get(f"/room/{room}?after={last['id']}&wait=60", timeout=60))
            await until_longpolls_wait(doomed.url, 1)  # SIGTERM must meet it held, not on its way in
            stopping, sent = await _sigterm(doomed)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await recv_json(ws, timeout=EXIT_WITHIN_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            await stream.end(timeout=EXIT_WITHIN_S)
            assert (await asyncio.wait_for(polling, EXIT_WITHIN_S)).json()["messages"] == []
            code = await asyncio.wait_for(stopping, 45)
    took = time.monotonic() - sent
    assert code == 0 and took < EXIT_WITHIN_S, f"exit {code} after {took:.1f} s; see {doomed.log_path}"


async def test_sigterm_exits_in_time_when_the_last_sessions_leave_during_shutdown(start_server) -> None:
    """Signed-in sessions busy with an op at SIGTERM (a wrong room key: bcrypt, one
    check at a time) are released while the lifespan is already stopping, each leaving
    presence just before the keeper is stopped. That cancel used to be swallowed
    (Python 3.11's wait_for), and the process never exited, logging nothing."""
    doomed = start_server()
    async with httpx.AsyncClient(base_url=doomed.url, timeout=10) as http, AsyncExitStack() as stack:
        owner = await new_agent(http)
        room = (await owner.create_room(http, key="the right key, long enough"))["id"]
        sessions = []
        for _ in range(8):
            agent = await new_agent(http)
            ws = await stack.enter_async_context(connect(doomed.ws_url))
            await recv_json(ws)
            await ws.send(orjson.dumps(agent.auth_frame()).decode())
            assert (await recv_until(ws, lambda f: f.get("ref") == "auth"))["type"] == "ok"
            sessions.append(ws)
        for n, ws in enumerate(sessions):
            await ws.send(orjson.dumps({"op": "subscribe", "room": room, "key": f"wrong key number {n}",
                                        "ref": "s"}).decode())
        stopping, sent = await _sigterm(doomed)
        code = await asyncio.wait_for(stopping, 45)
        took = time.monotonic() - sent
        for ws in sessions:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert code == 0 and took < EXIT_WITHIN_S, f"exit {code} after {took:.1f} s; see {doomed.log_path}"
    assert "did not finish in time" not in doomed.log_text()
