"""The connection below ASGI (wsserver.Socket), through a real server and raw frames:
the one heartbeat for all sessions, control frames, the closing handshake, release."""

from __future__ import annotations

import asyncio
import struct
import time

import orjson
import pytest

from tests.helpers import ServerProcess, new_agent
from tests.resilience.fuzz_support import RawSession, client_frame, metric

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
HEARTBEAT_S = 1.0
SLACK_S = 0.75  # a loaded CI machine's timer and scheduling delays


@pytest.fixture(scope="module")
def heartbeat_server(start_module_server) -> ServerProcess:
    return start_module_server(WS_HEARTBEAT=str(int(HEARTBEAT_S)))


async def _hello(session: RawSession) -> dict:
    hello = await session.recv_json()
    assert hello is not None and hello["type"] == "hello"
    return hello


async def test_a_silent_peer_is_closed_within_two_heartbeat_intervals(heartbeat_server) -> None:
    session = await RawSession.open(heartbeat_server.port)
    opened = time.monotonic()
    try:
        await _hello(session)
        pings = 0
        while True:  # never answer: read what the server sends until it gives up on us
            opcode, payload = await session.recv_frame(timeout=2 * HEARTBEAT_S + SLACK_S)
            if opcode == PING:
                pings += 1
            elif opcode == CLOSE:
                break
        silent_for = time.monotonic() - opened
        assert session.close_code == 1011 and payload[2:] == b"keepalive ping timeout"
        assert pings >= 1, "closed without being pinged first"
        assert HEARTBEAT_S - 0.1 <= silent_for <= 2 * HEARTBEAT_S + SLACK_S, silent_for
        with pytest.raises(EOFError):  # and the TCP connection ends
            await session.recv_frame(timeout=2)
    finally:
        await session.close()


async def test_a_peer_that_answers_pings_stays_open(heartbeat_server) -> None:
    session = await RawSession.open(heartbeat_server.port)
    try:
        await _hello(session)
        pings = 0
        until = time.monotonic() + 3.5 * HEARTBEAT_S
        while (left := until - time.monotonic()) > 0:
            try:
                opcode, payload = await session.recv_frame(timeout=left)
            except TimeoutError:
                break
            assert opcode != CLOSE, f"closed with {session.close_code} though it answered every ping"
            if opcode == PING:
                pings += 1
                await session.send(client_frame(PONG, payload))
        assert pings >= 3
        await session.send(client_frame(TEXT, b'{"op": "ping", "ref": "still"}'))
        answer = await session.recv_json()
        assert answer is not None and answer["type"] == "pong" and answer["ref"] == "still"
    finally:
        await session.close()


async def test_pings_are_answered_with_their_payload_and_a_close_is_echoed(server) -> None:
    session = await RawSession.open(server.port)
    try:
        await _hello(session)
        await session.send(client_frame(PING, b"are you there"))
        assert await session.recv_frame() == (PONG, b"are you there")
        await session.send(client_frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
        assert await session.recv_frame() == (CLOSE, struct.pack("!H", 1000) + b"bye")
        with pytest.raises(EOFError):
            await session.recv_frame(timeout=2)
    finally:
        await session.close()


async def test_a_peer_that_never_answers_our_close_is_dropped_after_5_s(server) -> None:
    # A bad signature: the server closes with 1008 and waits for the peer's close frame.
    session = await RawSession.open(server.port, headers={
        "X-AICQ-Agent": "00000000-0000-4000-8000-000000000000", "X-AICQ-Nonce": "n" * 32,
        "X-AICQ-Timestamp": str(int(time.time() * 1000)), "X-AICQ-Signature": "bad"})
    try:
        assert await session.recv_json() is None and session.close_code == 1008
        closed_at = time.monotonic()
        with pytest.raises(EOFError):
            await session.recv_frame(timeout=5 + 2 * SLACK_S)
        assert 5 - SLACK_S <= time.monotonic() - closed_at <= 5 + 2 * SLACK_S
    finally:
        await session.close()


async def test_every_way_of_ending_releases_the_session(server, http) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    before = metric(server.url, "aicq_ws_sessions")

    async def subscribed(headers: dict[str, str] | None = None) -> RawSession:
        session = await RawSession.open(server.port, headers=headers)
        await _hello(session)
        await session.send(client_frame(TEXT, orjson.dumps({"op": "subscribe", "room": room, "ref": "s"})))
        assert (await session.recv_json())["type"] == "ok"
        return session

    polite = await subscribed(agent.headers(b""))  # authenticated: it holds a DM channel too
    vanished, rude, half = await subscribed(), await subscribed(), await subscribed()
    assert metric(server.url, "aicq_ws_sessions") >= before + 4
    await polite.send(client_frame(CLOSE, struct.pack("!H", 1000)))
    vanished.writer.transport.abort()  # type: ignore[attr-defined]
    await rude.send(client_frame(0x3, b""))  # a reserved opcode: closed with 1002
    half.writer.write_eof()
    for session in (polite, rude, half):
        await session.close()

    async def released() -> None:
        while metric(server.url, "aicq_ws_sessions") > before:  # noqa: ASYNC110 - a gauge, not an event
            await asyncio.sleep(0.05)
    await asyncio.wait_for(released(), 10)
