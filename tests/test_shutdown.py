"""SIGTERM ends the process, whatever it is doing (shutdown.py): a rolling deploy must
never wait for SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from aicq import shutdown
from tests.helpers import new_agent, recv_json, recv_until

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


# Real servers


async def _sigterm(server) -> tuple[asyncio.Future[int | None], float]:
    """Send SIGTERM; (the exit code to come, when it was sent)."""
    stopping = asyncio.get_running_loop().run_in_executor(None, server.stop, signal.SIGTERM, 40)
    return stopping, time.monotonic()


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
