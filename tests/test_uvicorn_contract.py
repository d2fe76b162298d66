"""The uvicorn contract: what aicq/edge/wsserver.py relies on inside uvicorn's WebSocket protocol.

``AICQWebSocketProtocol`` lets uvicorn do the handshake, then takes the connection
over (see the module's docstring for the list). uvicorn does not promise to keep its
internals, so each test here names the attribute or behaviour it checks: a uvicorn
(or websockets) upgrade that breaks the handoff fails here with the reason, not
somewhere in a session test. What the handed-over connection then does (pings,
closes, aborts, 1012 on shutdown) is tested through real servers in test_wsserver.py
and test_ws.py.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.protocols import utils as uvicorn_utils
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.server import ServerProtocol

from aicq.edge.wsserver import AICQWebSocketProtocol
from aicq.serve import uvicorn_config
from aicq.settings import Settings

METHODS = ["handle_connect", "start_keepalive", "run_asgi", "send_500_response", "shutdown",
           "data_received", "connection_lost", "send", "receive"]
ATTRIBUTES = ["transport", "conn", "config", "connections", "logger", "app", "handshake_initiated",
              "handshake_complete", "close_timer"]


async def _app(scope: object, receive: object, send: object) -> None:  # never called here
    raise AssertionError("not reached")


@pytest.fixture
def protocol() -> Iterator[WebSocketsSansIOProtocol]:
    config = uvicorn_config(_app, Settings.from_env({}), lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        yield AICQWebSocketProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()


@pytest.mark.parametrize("name", METHODS)
def test_the_methods_the_handoff_uses_exist(name: str) -> None:
    assert callable(getattr(WebSocketsSansIOProtocol, name, None)), (
        f"uvicorn's WebSocketsSansIOProtocol no longer has {name}(): aicq/edge/wsserver.py needs it")


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_the_state_the_handoff_reads_exists(protocol: WebSocketsSansIOProtocol, name: str) -> None:
    assert hasattr(protocol, name), f"uvicorn's protocol no longer sets self.{name}"


def test_websockets_keeps_what_the_handoff_closes(protocol: WebSocketsSansIOProtocol) -> None:
    assert isinstance(protocol.conn, ServerProtocol)
    for name in ("handshake_exc", "data_to_send", "parser"):
        assert hasattr(protocol.conn, name), f"websockets' ServerProtocol no longer has {name}"
    assert protocol.config.ws_max_size > 0, "config.ws_max_size is the message limit the Socket enforces"


def test_send_starts_the_keepalive_right_after_the_101() -> None:
    """The handoff happens in start_keepalive(): uvicorn must call it once the 101 is
    written, from send(), and nowhere else."""
    source = inspect.getsource(WebSocketsSansIOProtocol.send)
    assert "self.start_keepalive()" in source, "send() no longer calls start_keepalive() after the 101"
    written = source.index("self.transport.write(b\"\".join(output))")
    assert written < source.index("self.start_keepalive()"), "start_keepalive() now runs before the 101"
    callers = [name for name, member in inspect.getmembers(WebSocketsSansIOProtocol, inspect.isfunction)
               if name not in ("send", "start_keepalive") and "self.start_keepalive()" in inspect.getsource(member)]
    assert callers == [], f"start_keepalive() is also called from {callers}"


def test_shutdown_reaches_every_connection_in_the_servers_set() -> None:
    """On SIGTERM uvicorn calls shutdown() on each member of server_state.connections and
    waits for the set to empty: an adopted Socket replaces its protocol there."""
    source = inspect.getsource(uvicorn.Server)
    assert "connection.shutdown()" in source and "self.server_state.connections" in source
    assert hasattr(uvicorn_utils, "ClientDisconnected")
