"""Drive `aicq mcp` as an LLM agent's MCP client would: the SDK's client, a real process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.client.helpers import REPO, cli_env, unique

WAIT = 20.0  # seconds: the bound on any single wait in these tests


@dataclass
class Agent:
    """One MCP session of one agent identity, and the stderr of its `aicq mcp` process."""

    client: Client
    profile: Path
    stderr_path: Path
    calls: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # the transcript

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def result(self, tool: str, args: dict[str, Any] | None = None) -> Any:
        """The raw ``CallToolResult`` (bounded in time)."""
        arguments = args or {}
        result = await asyncio.wait_for(self.client.call_tool(tool, arguments), WAIT + 65)
        self.calls.append((tool, arguments, _text(result)))
        return result

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """(text, structured content) of a call that must succeed."""
        result = await self.result(tool, args)
        assert not result.is_error, f"{tool}({args}) failed: {_text(result)}"
        assert isinstance(result.structured_content, dict)
        return _text(result), result.structured_content

    async def fail(self, tool: str, args: dict[str, Any] | None = None) -> str:
        """The sentence of a call that must fail with ``isError``."""
        result = await self.result(tool, args)
        assert result.is_error, f"{tool}({args}) should have failed: {_text(result)}"
        return _text(result)


def _text(result: Any) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


def mcp_args(url: str, profile: Path, name: str | None, *extra: str) -> list[str]:
    args = ["-m", "aicq", "mcp", "--url", url, "--profile", str(profile), *extra]
    return args + (["--register", name] if name else [])


@contextlib.asynccontextmanager
async def stdio_agent(
    url: str, profile: Path | None = None, name: str | None = "", *extra: str
) -> AsyncIterator[Agent]:
    """`aicq mcp` over stdio for a profile (a fresh one, registered under a fresh name, by default)."""
    profile = profile or Path(tempfile.mkdtemp(prefix="aicq-mcp-")) / "profile"
    stderr_path = profile.parent / f"{profile.name}.stderr"
    params = StdioServerParameters(
        command=sys.executable,
        args=mcp_args(url, profile, unique("agent") if name == "" else name, *extra),
        env=cli_env(),
        cwd=REPO,
    )
    garbled: list[Exception] = []  # what stdout carried that was not the protocol

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            garbled.append(message)

    with stderr_path.open("a") as errlog:
        async with asyncio.timeout(WAIT):
            client = Client(stdio_client(params, errlog=errlog), message_handler=on_message)
            await client.__aenter__()
        try:
            yield Agent(client, profile, stderr_path)
        finally:
            await client.__aexit__(None, None, None)
    assert not garbled, f"stdout carried more than the protocol: {garbled}"


@contextlib.asynccontextmanager
async def http_process(url: str, port: int, name: str) -> AsyncIterator[tuple[str, Path]]:
    """`aicq mcp --http 127.0.0.1:PORT` as a process; yields (MCP endpoint URL, stderr path)."""
    profile = Path(tempfile.mkdtemp(prefix="aicq-mcp-")) / "profile"
    stderr_path = profile.parent / "stderr"
    with stderr_path.open("a") as errlog:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *mcp_args(url, profile, name, "--http", f"127.0.0.1:{port}"),
            env=cli_env(), cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=errlog,
        )
        endpoint = f"http://127.0.0.1:{port}/mcp"
        try:
            await _until_listening(process, endpoint)
            yield endpoint, stderr_path
        finally:
            if process.returncode is None:
                process.terminate()
            assert process.stdout is not None
            async with asyncio.timeout(WAIT):
                out = await process.stdout.read()
                await process.wait()
            assert out == b"", "nothing but the protocol may use stdout"


async def _until_listening(process: asyncio.subprocess.Process, endpoint: str) -> None:
    async with asyncio.timeout(WAIT), httpx.AsyncClient() as http:
        while process.returncode is None:
            try:
                await http.get(endpoint, timeout=1)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"aicq mcp --http exited with {process.returncode}")
