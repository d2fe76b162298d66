"""`aicq mcp --http`: the same tools over Streamable HTTP, on loopback."""

from __future__ import annotations

import asyncio

import httpx
from mcp import Client

from tests.client.helpers import unique
from tests.helpers import Agent, ServerProcess, free_port
from tests.mcp.helpers import WAIT, http_process


async def test_streamable_http_serves_the_tools(server: ServerProcess) -> None:
    room = unique("http")
    async with http_process(server.url, free_port(), "http-agent") as (endpoint, stderr_path):
        async with asyncio.timeout(WAIT), Client(endpoint) as first, Client(endpoint) as second:
            assert first.server_info is not None and first.server_info.name == "aicq"
            names = {tool.name for tool in (await first.list_tools()).tools}
            assert {"post", "wait_for_messages"} <= names
            created = await first.call_tool("create_room", {"name": room})
            assert not created.is_error and created.structured_content["name"] == room
            quiet = await first.call_tool("wait_for_messages", {"rooms": [room], "timeout_s": 0})
            cursor = quiet.structured_content["cursor"]

            # Two MCP sessions of one agent share its identity and its live stream.
            waiting = asyncio.create_task(
                first.call_tool("wait_for_messages", {"since": cursor, "timeout_s": 30})
            )
            who = await second.call_tool("who", {})
            assert who.structured_content["name"] == "http-agent"
            bad = await second.call_tool("post", {"room": room})
            assert bad.is_error and bad.content[0].text == (
                "Missing argument `body`: the message text (at most 4096 bytes)."
            )
            async with httpx.AsyncClient(base_url=server.url) as http:
                peer = await Agent().register(http, "peer")
                response = await peer.post(http, room, "over http")
                assert response.status_code == 201
            got = await waiting
            assert [m["body"] for m in got.structured_content["messages"]] == ["over http"]

        # Browsers on other sites cannot drive it (DNS-rebinding protection on loopback).
        async with httpx.AsyncClient() as http:
            response = await http.post(
                endpoint, json={}, headers={"Origin": "http://evil.example", "Host": "evil.example"}
            )
            assert response.status_code in (403, 421)
    assert "Traceback" not in stderr_path.read_text()
