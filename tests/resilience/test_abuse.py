"""Abuse: nonce replay races, a storm of dropped connections, subscription floods, a reader that never reads.

Each scenario runs on a server of its own (loopback whitelisted, so what is measured
is the server, not its rate limits) and prints its figures (pytest -s).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import time
from collections import Counter

import httpx
import orjson
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import new_agent, recv_json, recv_until
from tests.resilience.fuzz_support import (  # noqa: F401 - figures is a fixture
    PingProbe,
    alive,
    client_frame,
    figures,
    handshake_request,
    metric,
    percentile,
    ping_once,
    rss_bytes,
)

STORM_CONNECTIONS = 10_000
STORM_PARALLEL = 200
RSS_GROWTH_LIMIT = 50 << 20  # after the storm settles
BYSTANDER_P99_LIMIT_S = 1.0  # on this 2-core machine, with the storm on the same cores


@pytest.fixture(scope="module")
def abuse_server(start_module_server):
    return start_module_server()


# Nonce replay races


async def test_one_nonce_admits_exactly_one_request_among_many_racing(abuse_server, figures) -> None:  # noqa: F811
    racers = 40
    async with httpx.AsyncClient(base_url=abuse_server.url, timeout=10,
                                 limits=httpx.Limits(max_connections=racers)) as http:
        agent = await new_agent(http, "replayer")
        room = (await agent.create_room(http))["id"]
        body = orjson.dumps({"body": "only once"})
        headers = agent.headers(body)  # one nonce, one signature, sent by every racer
        responses = await asyncio.gather(*[
            http.post(f"/room/{room}", content=body, headers=headers) for _ in range(racers)])
        statuses = Counter(r.status_code for r in responses)
        refusals = Counter(r.json()["error"] for r in responses if r.status_code == 401)
        history = (await http.get(f"/room/{room}")).json()["messages"]
    figures("nonce replay race, REST", {"racers": racers, "statuses": dict(statuses), "401 reasons": dict(refusals),
                                        "messages stored": len(history)})
    assert statuses == Counter({201: 1, 401: racers - 1}), statuses
    assert set(refusals) == {"nonce already used"}, refusals
    assert len(history) == 1


async def test_one_auth_frame_admits_exactly_one_session_or_request(abuse_server, figures) -> None:  # noqa: F811
    """WS auth frames and REST requests racing with one nonce: the signature is the same
    for both (an auth frame signs ``{}``, as does a GET), so exactly one of all of them wins."""
    sessions, requests = 20, 20
    async with httpx.AsyncClient(base_url=abuse_server.url, timeout=10,
                                 limits=httpx.Limits(max_connections=requests)) as http:
        agent = await new_agent(http, "ws-replayer")
        frame = agent.auth_frame("race")
        rest_headers = {"X-AICQ-Agent": agent.id, "X-AICQ-Nonce": frame["nonce"],
                        "X-AICQ-Timestamp": frame["ts"], "X-AICQ-Signature": frame["sig"]}
        sockets = [await connect(abuse_server.ws_url) for _ in range(sessions)]
        try:
            for ws in sockets:
                assert (await recv_json(ws))["type"] == "hello"
            payload = orjson.dumps(frame).decode()

            async def ws_attempt(ws) -> str:
                await ws.send(payload)
                answer = await recv_json(ws)
                if answer["type"] == "ok":
                    return "ws ok"
                assert answer["type"] == "error" and answer["code"] == 401, answer
                try:  # a failed auth frame closes the session with 1008
                    await asyncio.wait_for(ws.recv(), 5)
                except ConnectionClosed as closed:
                    return f"ws {answer['code']} then close {closed.rcvd.code if closed.rcvd else None}"
                return "ws error, not closed"

            async def rest_attempt() -> str:
                return f"rest {(await http.get('/dm', headers=rest_headers)).status_code}"

            outcomes = Counter(await asyncio.gather(*[ws_attempt(ws) for ws in sockets],
                                                    *[rest_attempt() for _ in range(requests)]))
        finally:
            await asyncio.gather(*[ws.close() for ws in sockets])
    figures("nonce replay race, WS auth frames + REST", {"attempts": sessions + requests, "outcomes": dict(outcomes)})
    winners = outcomes["ws ok"] + outcomes["rest 200"]
    assert winners == 1, outcomes
    assert outcomes["ws 401 then close 1008"] + outcomes["rest 401"] == sessions + requests - 1, outcomes


# 10,000 connections opened and dropped


async def _drop(port: int, style: int) -> str:
    """One connection, abandoned at some point of its life."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        if style == 0:
            return "connect, close"
        if style == 1:  # RST instead of FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "connect, reset"
        request = handshake_request()
        if style == 2:
            writer.write(request[: len(request) // 2])  # half a handshake
            await writer.drain()
            return "half a handshake"
        if style == 3:
            writer.write(b"GET /api HTTP/1.1\r\nHost: x\r\nContent-Le")
            await writer.drain()
            return "half an HTTP request"
        writer.write(request)
        await writer.drain()
        if style == 4:
            return "handshake, no wait"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the 101 first
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        if style == 5:
            return "101, dropped"
        writer.write(client_frame(0x1, b'{"op": "subscribe", "room": "global"}'))
        await writer.drain()
        return "101, subscribe, dropped"
    finally:
        writer.close()


async def test_ten_thousand_dropped_connections(abuse_server, figures) -> None:  # noqa: F811
    server = abuse_server
    pid = server.process.pid
    async with connect(server.ws_url) as bystander:
        await recv_json(bystander)
        # Warm up (first imports, pools, the first sessions) before the baseline.
        await asyncio.gather(*[_drop(server.port, style) for style in range(7) for _ in range(30)])
        await _settle(server, 0)
        baseline_rss = rss_bytes(pid)
        baseline_fds = _client_connections(pid, server.port)
        calm = PingProbe(bystander).start()
        await asyncio.sleep(1.0)  # a second of pings with nothing else going on
        await calm.stop()

        probe = PingProbe(bystander).start()
        peak = baseline_rss
        outcomes: Counter = Counter()
        errors: Counter = Counter()
        semaphore = asyncio.Semaphore(STORM_PARALLEL)
        started = time.monotonic()

        async def one(i: int) -> None:
            async with semaphore:
                try:
                    outcomes[await _drop(server.port, i % 7)] += 1
                except (OSError, TimeoutError, asyncio.IncompleteReadError, AssertionError) as exc:
                    errors[type(exc).__name__] += 1

        async def watch_rss(done: asyncio.Event) -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes(pid))
                try:
                    await asyncio.wait_for(done.wait(), 0.1)
                except TimeoutError:
                    pass

        done = asyncio.Event()
        watcher = asyncio.create_task(watch_rss(done))
        await asyncio.gather(*[one(i) for i in range(STORM_CONNECTIONS)])
        storm_s = time.monotonic() - started
        settle_s = await _settle(server, 0)
        done.set()
        await watcher
        await probe.stop()
        after_rss = rss_bytes(pid)
        after_fds = await _settled_connections(pid, server.port, baseline_fds + 5)
        pong_after = (await _ping(bystander)) * 1000
    figures("10,000 open-and-drop connections", {
        "connections": sum(outcomes.values()),
        "by style": dict(outcomes),
        "client-side errors": dict(errors) or "none",
        "storm duration (s)": round(storm_s, 1),
        "settled after (s)": round(settle_s, 1),
        "RSS baseline / peak / settled (MiB)": f"{baseline_rss / 2**20:.1f} / {peak / 2**20:.1f} / {after_rss / 2**20:.1f}",
        "RSS growth after settling (MiB), limit 50": round((after_rss - baseline_rss) / 2**20, 1),
        "client connections baseline / settled": f"{baseline_fds} / {after_fds}",
        "bystander ping p50 / p99 calm (ms)": f"{percentile(calm.samples, .5) * 1000:.1f} / "
                                               f"{percentile(calm.samples, .99) * 1000:.1f}",
        "bystander ping p50 / p99 / max in storm (ms)": f"{percentile(probe.samples, .5) * 1000:.1f} / "
                                                        f"{percentile(probe.samples, .99) * 1000:.1f} / "
                                                        f"{max(probe.samples, default=0) * 1000:.1f}",
        "bystander pings in storm": len(probe.samples),
        "bystander ping after (ms)": round(pong_after, 1),
    })
    assert alive(server)
    assert sum(outcomes.values()) + sum(errors.values()) == STORM_CONNECTIONS
    assert sum(errors.values()) < STORM_CONNECTIONS * 0.01, errors
    assert not probe.failures, probe.failures
    assert percentile(probe.samples, 0.99) < BYSTANDER_P99_LIMIT_S
    assert after_rss - baseline_rss < RSS_GROWTH_LIMIT
    assert after_fds <= baseline_fds + 5, (baseline_fds, after_fds)
    assert "Traceback" not in server.log_text()


def _client_connections(pid: int, port: int) -> int:
    """Connections clients hold to the server's port. (Not all fds: the store pools may
    grow under a storm, and keep their connections, as pools should.)"""
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN)


async def _settled_connections(pid: int, port: int, bound: int, timeout: float = 15) -> int:
    """Client connections once at most ``bound``, or after ``timeout``: connections that
    never finished their upgrade close on uvicorn's own timers, later than sessions."""
    deadline = time.monotonic() + timeout
    while True:
        count = _client_connections(pid, port)
        if count <= bound or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.2)  # polling: a connection count offers nothing to wait on


async def _settle(server, sessions: int, timeout: float = 30) -> float:
    """Seconds until the server's session gauge is back to ``sessions`` (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        # the bystander itself is one session
        if await asyncio.to_thread(metric, server.url, "aicq_ws_sessions") <= sessions + 1:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"sessions did not settle in {timeout}s")


async def _ping(ws) -> float:
    return await ping_once(ws, secrets.token_hex(4))


# A thousand subscriptions on one session


async def test_a_thousand_subscriptions_on_one_session(abuse_server, figures) -> None:  # noqa: F811
    async with httpx.AsyncClient(base_url=abuse_server.url, timeout=10,
                                 limits=httpx.Limits(max_connections=20)) as http:
        agent = await new_agent(http, "subscriber")
        semaphore = asyncio.Semaphore(20)

        async def create() -> str:
            async with semaphore:
                return (await agent.create_room(http))["id"]

        rooms = await asyncio.gather(*[create() for _ in range(200)])
        async with connect(abuse_server.ws_url, max_size=None) as ws:
            await recv_json(ws)
            started = time.monotonic()
            # Pipelined: all thousand go out before any answer is read.
            for i in range(1000):
                room = rooms[i] if i < 100 else rooms[100 + i % 100]
                await ws.send(orjson.dumps({"op": "subscribe", "room": room, "ref": i}).decode())
            answers: dict[int, dict] = {}
            while len(answers) < 1000:
                frame = await recv_json(ws, timeout=10)
                if frame.get("type") in ("ok", "error"):
                    answers[frame["ref"]] = frame
            elapsed = time.monotonic() - started
            first = [answers[i]["type"] for i in range(100)]
            rest = Counter((answers[i]["type"], answers[i].get("code")) for i in range(100, 1000))
            # Still works: a ping, a live message in a subscribed room, and room for one more
            # once one is given up.
            latency = await _ping(ws)
            posted = await agent.post(http, rooms[42], "still listening")
            assert posted.status_code == 201
            live = await recv_until(ws, lambda f: f.get("type") == "message", timeout=5)
            await ws.send(orjson.dumps({"op": "unsubscribe", "room": rooms[0], "ref": "u"}).decode())
            await recv_until(ws, lambda f: f.get("ref") == "u")
            await ws.send(orjson.dumps({"op": "subscribe", "room": rooms[150], "ref": "again"}).decode())
            again = await recv_until(ws, lambda f: f.get("ref") == "again")
    figures("1,000 subscription attempts on one session", {
        "first 100": dict(Counter(first)),
        "101st to 1000th": {f"{t} {c}": n for (t, c), n in rest.items()},
        "answered in (s)": round(elapsed, 2),
        "ping afterwards (ms)": round(latency * 1000, 1),
        "live message afterwards": live["msg"]["body"],
        "subscribe after an unsubscribe": again["type"],
    })
    assert first == ["ok"] * 100
    assert rest == Counter({("error", 400): 900}), rest
    assert live["room"] == rooms[42]
    assert again["type"] == "ok"


# A client that never reads


def _stalled_subscriber(port: int, room: str) -> socket.socket:
    """Handshake (the 101 read in full), subscribe, then never read again: a tiny buffer fills fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(handshake_request())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)  # byte by byte: nothing after the 101 is consumed
        assert chunk, "closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    sock.sendall(client_frame(0x1, orjson.dumps({"op": "subscribe", "room": room})))
    return sock


def _closed_by_server(sock: socket.socket, timeout: float = 10) -> str:
    """Drain what the server sent until it ends the connection: how it ended."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return "closed (FIN)"
    except ConnectionResetError:
        return "closed (RST)"
    except TimeoutError:
        return "still open"
    return "still open"


async def test_a_reader_that_never_reads_is_closed_and_nobody_else_slows(start_server, figures) -> None:  # noqa: F811
    server = start_server(WS_QUEUE_BYTES="65536")
    before = metric(server.url, "aicq_ws_slow_disconnects_total")
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=10)) as http:
        agent = await new_agent(http, "busy-poster")
        room = (await agent.create_room(http))["id"]
        stalled = await asyncio.to_thread(_stalled_subscriber, server.port, room)
        async with connect(server.ws_url, max_size=None) as healthy, connect(server.ws_url) as bystander:
            await recv_json(healthy)
            await recv_json(bystander)
            await healthy.send(orjson.dumps({"op": "subscribe", "room": room, "ref": "s"}).decode())
            await recv_until(healthy, lambda f: f.get("ref") == "s")
            probe = PingProbe(bystander).start()
            sent_at: dict[str, float] = {}
            delivery: list[float] = []
            expected: list[int] = []  # set once posting stops
            caught_up = asyncio.Event()

            async def read_healthy() -> None:
                while True:
                    frame = await recv_json(healthy, timeout=30)
                    if frame.get("type") == "message":
                        delivery.append(time.monotonic() - sent_at[frame["msg"]["body"][:12]])
                        if expected and len(delivery) >= expected[0]:
                            caught_up.set()

            reader = asyncio.create_task(read_healthy())
            body = "y" * 3000
            closed_at = None
            started = time.monotonic()
            posted = 0
            for batch in range(400):  # bounded: at most 4,000 posts of 3 KB
                tags = [f"{batch:05d}-{i:05d}:" for i in range(10)]
                for tag in tags:
                    sent_at[tag] = time.monotonic()
                results = await asyncio.gather(*[agent.post(http, room, tag + body) for tag in tags])
                assert all(r.status_code == 201 for r in results), [r.text for r in results if r.status_code != 201]
                posted += len(tags)
                if batch % 5 == 4 and await asyncio.to_thread(
                        metric, server.url, "aicq_ws_slow_disconnects_total") >= before + 1:
                    closed_at = time.monotonic() - started
                    break
            # Let the healthy reader catch up with everything posted (bounded).
            expected.append(posted)
            if len(delivery) >= posted:
                caught_up.set()
            try:
                await asyncio.wait_for(caught_up.wait(), 20)
            except TimeoutError:
                pass  # judged below
            reader.cancel()
            await probe.stop()
        ended = await asyncio.to_thread(_closed_by_server, stalled)
        stalled.close()
    after = metric(server.url, "aicq_ws_slow_disconnects_total")
    figures("a client that never reads (WS_QUEUE_BYTES=64 KiB, 3 KB posts)", {
        "posts until the stalled reader was closed": posted,
        "closed after (s)": round(closed_at, 2) if closed_at is not None else "never",
        "aicq_ws_slow_disconnects_total": f"{before:.0f} -> {after:.0f}",
        "stalled socket, seen from the client": ended,
        "healthy subscriber: delivered / posted": f"{len(delivery)} / {posted}",
        "healthy delivery p50 / p99 / max (ms)": " / ".join(
            f"{percentile(delivery, q) * 1000:.1f}" for q in (0.5, 0.99, 1.0)),
        "bystander ping p50 / p99 / max (ms)": " / ".join(
            f"{percentile(probe.samples, q) * 1000:.1f}" for q in (0.5, 0.99, 1.0)),
        "server RSS (MiB)": round(rss_bytes(server.process.pid) / 2**20, 1),
    })
    assert closed_at is not None, "the stalled reader was never closed"
    assert after >= before + 1
    assert ended.startswith("closed"), ended
    assert len(delivery) == posted, "the healthy subscriber missed messages"
    assert not probe.failures, probe.failures
    assert percentile(probe.samples, 0.99) < BYSTANDER_P99_LIMIT_S
    assert percentile(delivery, 0.99) < 2.0
    server.stop()
