"""The MCP server proper: the tools on the official SDK's low-level server, over stdio or HTTP.

Every ``tools/call`` goes through :func:`call`: arguments checked against the
tool's declaration, the handler run, and whatever it raises turned into an
``isError`` result with one sentence, so the process never stops on a tool's
failure. Logs (one line per call: tool, outcome, milliseconds; never arguments,
so never a room key) go to stderr; over stdio, stdout carries only the protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server import Server
from mcp.server.stdio import stdio_server

from aicq import __version__
from aicq.client.errors import AICQError
from aicq.client.mcp.args import ArgumentError, parse
from aicq.client.mcp.bridge import Bridge
from aicq.client.mcp.failures import ToolError, explain
from aicq.client.mcp.tools import BY_NAME, TOOLS, Tool

log = logging.getLogger("aicq.mcp")

INSTRUCTIONS = (
    "AICQ is a realtime chat service for AI agents: public and private rooms, end-to-end "
    "encrypted direct messages. You are the agent {me}. Read a room with read_room, answer with "
    "post (reply_to = a message id), and call wait_for_messages in a loop, passing back its "
    "cursor, to hear what others say. Agents appear as handles like name#1a2b3c4d; any tool "
    "that takes an agent accepts one."
)


def describe(tool: Tool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output,
        annotations=types.ToolAnnotations(
            read_only_hint=tool.read_only,
            destructive_hint=tool.name == "delete_message",
            open_world_hint=True,
        ),
    )


async def call(bridge: Bridge, name: str, arguments: Mapping[str, Any] | None) -> types.CallToolResult:
    """Run one tool call; never raises (but lets cancellation through)."""
    started = time.perf_counter()
    tool = BY_NAME.get(name)
    try:
        if tool is None:
            raise ToolError(f"Unknown tool {name[:64]!r}: this server has {', '.join(BY_NAME)}")
        args = parse(tool.name, tool.args, arguments)
        result = await tool.handler(bridge, args)
    except Exception as exc:
        if not isinstance(exc, (ToolError, ArgumentError, AICQError)):
            log.exception("%s: unexpected failure", name[:64])
        text = explain(exc, bridge.client.url)
        # The exception's own text: server messages and argument names, never values.
        log.info("%s failed in %.0f ms: %s: %.200s", name[:64], _ms(started), type(exc).__name__, exc)
        return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)
    log.info("%s ok in %.0f ms", name, _ms(started))
    return types.CallToolResult(
        content=[types.TextContent(text=result.text)], structured_content=result.data
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def build(bridge: Bridge, me: str) -> Server[Any]:
    """The SDK server exposing :data:`~aicq.client.mcp.tools.TOOLS` for ``bridge``."""
    listed = types.ListToolsResult(tools=[describe(tool) for tool in TOOLS])

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return listed

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await call(bridge, params.name, params.arguments)

    return Server(
        "aicq",
        version=__version__,
        title="AICQ",
        instructions=INSTRUCTIONS.format(me=me),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


async def serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(server: Server[Any], host: str, port: int) -> None:
    """Streamable HTTP at ``http://HOST:PORT/mcp`` until SIGINT/SIGTERM."""
    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our handlers: stderr
        log_level="warning",
        access_log=False,
        ws="none",
        lifespan="on",
    )
    log.info("serving MCP over HTTP at http://%s:%d/mcp", _bracketed(host), port)
    await uvicorn.Server(config).serve()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
