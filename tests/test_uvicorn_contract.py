"""The uvicorn contract: what aicq/edge/wsserver.py relies on inside uvicorn's WebSocket protocol.

``AICQWebSocketProtocol`` subclasses uvicorn's ``WebSocketsSansIOProtocol`` and reads
and writes its internals, which uvicorn does not promise to keep. Each test here
names the attribute or behaviour it checks, so a uvicorn (or websockets) upgrade that
breaks the subclass fails here with the reason, not somewhere in a session test.

The server is uvicorn configured exactly as ``aicq serve`` configures it
(``serve.uvicorn_config``), run in a thread on its own event loop, on both loops it
may get: uvloop (what ``aicq serve`` picks) and asyncio's own. The app is a tiny
command interpreter driven over the WebSocket, so every server-side action runs on
the server's loop; the client is websockets' sans-I/O client over a raw socket, so it
does exactly what a test says (answer a close, or not; read, or not).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from aicq.edge import wsserver
from aicq.edge.wsserver import AICQWebSocketProtocol, Flag, Mailbox, Socket
from aicq.protocol import text_frame
from aicq.serve import uvicorn_config
from aicq.settings import Settings
from tests.helpers import free_port

WAIT = 10.0  # seconds: the bound on every wait here
TRANSPORT_METHODS = ("write", "is_closing", "get_write_buffer_size", "abort", "close")

# -- the server side ------------------------------------------------------------------


@dataclass
class Accepted:
    """One accepted connection, as the app saw it (read from the test's thread)."""

    socket: Socket
    disconnect: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)  # what receive() ended with
    reports: queue.Queue[Any] = field(default_factory=queue.Queue)  # results of commands

    @property
    def protocol(self) -> AICQWebSocketProtocol:
        return self.socket._protocol

    def next(self, what: queue.Queue[Any]) -> Any:
        try:
            return what.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the app reported nothing within {WAIT}s") from None


async def _fill(socket: Socket, limit: int, size: int) -> tuple[int, int, bool]:
    """Offer frames until ``offer`` refuses: (frames written, buffer size then, writable then)."""
    frame = text_frame(b"x" * size)
    for written in range(100_000):
        if not socket.offer(frame, limit):
            protocol = socket._protocol
            return written, protocol.transport.get_write_buffer_size(), protocol.writable.is_set()
        await asyncio.sleep(0)  # let the loop flush what the kernel takes
    raise AssertionError("offer never refused: the write buffer never filled")


def command_app(accepted: queue.Queue[Accepted | AssertionError]) -> Callable[..., Any]:
    """An ASGI app that accepts, hands the connection to the test, then obeys text commands."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket", scope["type"]
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        socket = scope["extensions"].get("aicq.socket")
        if not isinstance(socket, Socket):
            accepted.put(AssertionError("no aicq.socket in the scope: uvicorn no longer calls "
                                        "handle_connect with self.scope built before the app runs"))
            return
        connection = Accepted(socket)
        accepted.put(connection)
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                connection.disconnect.put(event)
                return
            verb, *args = event["text"].split(" ", 2)
            if verb == "close":
                socket.close(int(args[0]), args[1])
                connection.reports.put("closed")
            elif verb == "fill":
                connection.reports.put(await _fill(socket, int(args[0]), int(args[1])))
                connection.reports.put(await socket.drain(WAIT))

    return app


class ContractServer:
    """uvicorn as ``aicq serve`` configures it, in a thread on an event loop of its own."""

    def __init__(self, loop_name: str, heartbeat: float = 60.0):
        self.accepted: queue.Queue[Accepted | AssertionError] = queue.Queue()
        settings = Settings(host="127.0.0.1", port=free_port(), ws_heartbeat=heartbeat)
        self.port = settings.port
        self.server = uvicorn.Server(uvicorn_config(command_app(self.accepted), settings, lifespan="off"))
        self.loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
        self.peers: list[Peer] = []  # aborted at teardown: a failed test leaves no session waiting
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),),
                                       name="contract-server", daemon=True)

    def start(self) -> ContractServer:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:  # uvicorn offers a flag, not an event
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        self.loop.close()

    def next_connection(self) -> Accepted:
        try:
            connection = self.accepted.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the app was not called within {WAIT}s") from None
        if isinstance(connection, AssertionError):
            raise connection
        return connection


@pytest.fixture(params=["uvloop", "asyncio"])
async def contract_server(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., ContractServer]]:
    """Start servers on the loop ``aicq serve`` picks (uvloop) and on asyncio's own."""
    started: list[ContractServer] = []

    def start(heartbeat: float = 60.0) -> ContractServer:
        started.append(ContractServer(request.param, heartbeat).start())
        return started[-1]

    yield start
    for server in started:
        for peer in server.peers:  # on this loop, theirs
            peer.abort()
        await asyncio.to_thread(server.stop)


# -- the client side ------------------------------------------------------------------


class Peer:
    """A WebSocket client that does only what it is told (websockets' sans-I/O client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, server: ContractServer) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        peer = cls(reader, writer, server.port)
        server.peers.append(peer)
        peer.protocol.send_request(peer.protocol.connect())
        peer.flush()
        response = await peer.event()
        assert isinstance(response, Response) and response.status_code == 101, response
        return peer

    def flush(self) -> None:
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def event(self) -> Any:
        """The next handshake response or frame; None once the server closed TCP."""
        while not self.pending:
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), WAIT)
            except ConnectionResetError:  # an aborted connection may end with a reset
                return None
            if not data:
                return None
            self.protocol.receive_data(data)
            self.pending.extend(self.protocol.events_received())
        return self.pending.pop(0)

    async def frame(self, opcode: Opcode, missing: str = "") -> Frame:
        """The next frame of this kind, skipping others (pings, say); ``missing`` says why none came."""
        while True:
            try:
                event = await self.event()
            except TimeoutError:
                raise AssertionError(f"no {opcode.name} frame within {WAIT}s: {missing}") from None
            assert event is not None, f"the connection closed before a {opcode.name} frame: {missing}"
            if isinstance(event, Frame) and event.opcode is opcode:
                return event

    def send(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self.flush()

    async def closed_by_server(self, missing: str = "") -> None:
        """Wait (bounded) until the server has closed the TCP connection."""
        try:
            while await self.event() is not None:
                pass
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {WAIT}s: {missing}") from None

    def abort(self) -> None:
        self.writer.transport.abort()


# -- the contract ---------------------------------------------------------------------


async def test_uvicorn_touches_only_what_mailbox_and_flag_provide() -> None:
    """The subclass replaces ``queue`` and ``writable`` with lighter stand-ins."""
    source = inspect.getsource(WebSocketsSansIOProtocol)
    for attribute, stand_in in (("queue", Mailbox), ("writable", Flag)):
        used = set(re.findall(rf"self\.{attribute}\.(\w+)", source))
        assert used, f"uvicorn no longer uses self.{attribute}: is {stand_in.__name__} still needed?"
        missing = {name for name in used if not callable(getattr(stand_in, name, None))}
        assert not missing, f"uvicorn now calls self.{attribute}.{', '.join(sorted(missing))}, " \
                            f"which {stand_in.__name__} lacks"


async def test_the_state_the_subclass_uses_exists_with_its_types(contract_server) -> None:
    server = contract_server()
    await Peer.connect(server)
    connection = await asyncio.to_thread(server.next_connection)
    protocol = connection.protocol
    expected: dict[str, Callable[[Any], bool]] = {
        "queue": lambda v: isinstance(v, Mailbox),
        "writable": lambda v: isinstance(v, Flag) and v.is_set(),
        "conn": lambda v: isinstance(v, ServerProtocol) and v.state is State.OPEN,
        "transport": lambda v: all(callable(getattr(v, name, None)) for name in TRANSPORT_METHODS),
        "loop": lambda v: isinstance(v, asyncio.AbstractEventLoop),
        "close_sent": lambda v: v is False,
        "close_timer": lambda v: v is None,
        "handshake_initiated": lambda v: v is True,
        "scope": lambda v: isinstance(v, dict) and v.get("extensions", {}).get("aicq.socket") is connection.socket,
        # start_keepalive (our override) runs once the handshake response is written.
        "request": lambda v: v is None,
        "response": lambda v: v is None,
    }
    for name, check in expected.items():
        assert hasattr(protocol, name), f"uvicorn's protocol has no `{name}`"
        assert check(getattr(protocol, name)), f"`{name}` is now {getattr(protocol, name)!r}"
    assert connection.socket.open


async def test_keepalive_still_runs_after_start_keepalive(contract_server) -> None:
    """Our start_keepalive drops the handshake objects, then must start uvicorn's pings."""
    server = contract_server(heartbeat=0.2)
    peer = await Peer.connect(server)
    await asyncio.to_thread(server.next_connection)
    await peer.frame(Opcode.PING, "start_keepalive is no longer called, or no longer starts the pings")
    # Not answering: the pong deadline closes the connection (1011), as the heartbeat promises.
    close = await peer.frame(Opcode.CLOSE, "an unanswered ping no longer closes the connection")
    assert close.data[:2] == (1011).to_bytes(2, "big"), close
    await peer.closed_by_server("after a keepalive timeout")


async def test_a_refused_upgrade_is_answered_not_left_hanging(contract_server) -> None:
    """data_received writes websockets' refusal that uvicorn itself would never write."""
    server = contract_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Long: {'a' * 9000}\r\n\r\n".encode()
    )
    try:
        answer = await asyncio.wait_for(reader.read(), WAIT)  # read() returns at EOF: the server closed
    except TimeoutError:
        raise AssertionError("a refused upgrade got no answer: data_received no longer writes "
                             "websockets' refusal (conn.handshake_exc, handshake_initiated)") from None
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 4"), \
        f"a refused upgrade got {answer[:200]!r} (websockets before 17 closes without an answer)"
    writer.close()


async def test_closing_from_our_side_completes_the_handshake(contract_server, monkeypatch) -> None:
    # A deadline far beyond WAIT: if the connection ends, the closing handshake ended it.
    monkeypatch.setattr(wsserver, "CLOSE_DEADLINE_S", 10 * WAIT)
    server = contract_server()
    peer = await Peer.connect(server)
    connection = await asyncio.to_thread(server.next_connection)
    peer.send("close 4001 going away")
    close = await peer.frame(Opcode.CLOSE, "Socket.close sent no close frame")
    assert close.data == (4001).to_bytes(2, "big") + b"going away", close
    assert await asyncio.to_thread(connection.next, connection.reports) == "closed"
    protocol = connection.protocol
    assert protocol.close_sent is True, "Socket.close no longer marks close_sent"
    assert protocol.close_timer is not None, "Socket.close set no close_timer"
    event = await asyncio.to_thread(connection.next, connection.disconnect)
    assert event == {"type": "websocket.disconnect", "code": 4001, "reason": "going away"}, event
    peer.flush()  # websockets' client queued its close reply
    await peer.closed_by_server("uvicorn no longer closes the transport when the peer answers our close "
                                "(handle_close with close_sent and close_timer set)")
    assert protocol.close_timer is None, "uvicorn left our abort timer running after a clean close"


async def test_a_peer_that_never_answers_our_close_is_aborted(contract_server, monkeypatch) -> None:
    monkeypatch.setattr(wsserver, "CLOSE_DEADLINE_S", 0.2)
    server = contract_server()
    peer = await Peer.connect(server)
    connection = await asyncio.to_thread(server.next_connection)
    peer.send("close 1013 too slow")
    close = await peer.frame(Opcode.CLOSE, "Socket.close sent no close frame")
    assert close.data[:2] == (1013).to_bytes(2, "big"), close
    # No reply: the deadline aborts the connection.
    await peer.closed_by_server("our close_timer (transport.abort) did not end it")
    assert not connection.socket.open


async def test_write_flow_control_reaches_the_socket(contract_server) -> None:
    """offer() bounds the buffer; uvicorn's pause/resume_writing drive drain() through Flag."""
    server = contract_server()
    peer = await Peer.connect(server)
    connection = await asyncio.to_thread(server.next_connection)
    limit, size = 256 << 10, 16 << 10
    frame_bytes = len(text_frame(b"x" * size))
    peer.send(f"fill {limit} {size}")  # the peer does not read until the server reports
    written, buffered, writable = await asyncio.to_thread(connection.next, connection.reports)
    assert written > 0 and buffered <= limit < buffered + frame_bytes, (written, buffered)
    assert buffered > 0 and not writable, "pause_writing no longer reaches protocol.writable"
    for _ in range(written):
        frame = await peer.frame(Opcode.TEXT, "a frame offer() accepted never arrived")
        assert len(frame.data) == size
    assert await asyncio.to_thread(connection.next, connection.reports) is True, \
        "resume_writing no longer reaches protocol.writable: drain() never returned"


async def test_shutdown_closes_sessions_with_1012(contract_server) -> None:
    server = contract_server()
    peer = await Peer.connect(server)
    await asyncio.to_thread(server.next_connection)
    server.server.should_exit = True
    close = await peer.frame(Opcode.CLOSE, "uvicorn's shutdown no longer closes WebSocket sessions")
    assert close.data[:2] == (1012).to_bytes(2, "big"), f"uvicorn's shutdown sent {close}"
    peer.flush()
    await peer.closed_by_server("after the 1012 close")
