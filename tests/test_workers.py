"""`aicq serve --workers N`: several processes on one port, one service (issue 14.1)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import orjson
import psutil
from websockets.asyncio.client import connect

from tests.helpers import new_agent, recv_json, recv_until


def _workers(pid: int) -> list[psutil.Process]:
    """The supervisor's worker processes (multiprocessing may add a helper of its own)."""
    workers = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:  # gone (or a zombie) between listing and asking
            continue
    return workers


async def _until(predicate, timeout: float = 30, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_workers_share_the_port_the_fanout_and_the_metrics(start_server) -> None:
    server = start_server(WEB_CONCURRENCY="2")
    assert server.process is not None
    await _until(lambda: len(_workers(server.process.pid)) == 2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        agent = await new_agent(http)
        room = (await agent.create_room(http))["id"]
        sockets = [await connect(server.ws_url) for _ in range(20)]
        try:
            instances = {(await recv_json(ws))["instance"] for ws in sockets}
            for i, ws in enumerate(sockets):
                await ws.send(orjson.dumps({"op": "subscribe", "room": room, "ref": i}).decode())
                await recv_until(ws, lambda f: f.get("type") == "ok")
            posted = (await agent.post(http, room, "to every worker's sessions")).json()
            for ws in sockets:  # whichever worker holds a session, the event reaches it
                event = await recv_until(ws, lambda f: f.get("type") == "message")
                assert event["msg"]["id"] == posted["id"]
            # Metrics sum every worker: all 20 sessions, whichever worker answers.
            assert _metric((await http.get("/metrics")).text, "aicq_ws_sessions") == 20
            assert all("." in instance for instance in instances)  # "<instance>.<worker pid>"
        finally:
            for ws in sockets:
                await ws.close()
            await asyncio.to_thread(server.stop)  # two workers, two pools: give them back now


async def test_a_dead_worker_is_replaced_and_sigterm_drains_them_all(start_server) -> None:
    server = start_server(WEB_CONCURRENCY="2")
    assert server.process is not None
    pid = server.process.pid
    await _until(lambda: len(_workers(pid)) == 2)
    victim = _workers(pid)[0]
    os.kill(victim.pid, signal.SIGKILL)
    await _until(lambda: victim.pid not in {w.pid for w in _workers(pid)} and len(_workers(pid)) == 2)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for _ in range(10):
            assert (await http.get("/health")).status_code == 200
    ws = await connect(server.ws_url)
    await recv_json(ws)
    assert await asyncio.to_thread(server.stop) == 0
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1012
