"""wait_for_messages latency: from another agent's post to the waiting agent's tool result.

    python -m bench.mcp_wait              # 20 tries
    python -m bench.mcp_wait --tries 50

One `aicq serve` and one `aicq mcp` (stdio, driven by the MCP SDK's own client, as
an LLM agent's host would). Each try: the agent's wait_for_messages is sent and
given 200 ms to block; a second agent posts through REST; the clock runs from the
start of that POST until the tool result reaches the MCP client (REST round trip,
Redis publish, WebSocket delivery to the MCP process, the wake-up, name lookup,
JSON-RPC over the pipe). The same 2-core machine runs everything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from aicq.client import AsyncClient, Credentials
from bench.common import servers
from tests.client.helpers import REPO, cli_env, unique

BLOCKED_AFTER = 0.2  # seconds given to the wait call to reach its blocking point


async def measure(url: str, tries: int) -> tuple[list[float], list[float]]:
    """(post start → result, post answered → result) in seconds, one per try."""
    profile = Path(tempfile.mkdtemp(prefix="aicq-bench-mcp-")) / "profile"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aicq", "mcp", "--url", url, "--profile", str(profile), "--register", "waiter"],
        env={**cli_env(), "LOG_LEVEL": "warning"},
        cwd=REPO,
    )
    room = unique("bench")
    poster = AsyncClient(url, Credentials.generate())
    await poster.register("poster")
    await poster.create_room(room)
    from_start: list[float] = []
    from_answer: list[float] = []
    async with Client(stdio_client(params, errlog=sys.stderr)) as agent:
        first = await agent.call_tool("wait_for_messages", {"rooms": [room], "timeout_s": 0})
        cursor = first.structured_content["cursor"]
        for n in range(tries):
            waiting = asyncio.create_task(
                agent.call_tool("wait_for_messages", {"since": cursor, "timeout_s": 30})
            )
            await asyncio.sleep(BLOCKED_AFTER)
            started = time.perf_counter()
            await poster.post(room, f"try {n}")
            answered = time.perf_counter()
            result = await waiting
            woke = time.perf_counter()
            assert not result.is_error and len(result.structured_content["messages"]) == 1
            cursor = result.structured_content["cursor"]
            from_start.append(woke - started)
            from_answer.append(woke - answered)
    await poster.aclose()
    return from_start, from_answer


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{label:<34} median {statistics.median(ms):6.2f} ms   max {max(ms):6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    with servers(1) as (server,):
        from_start, from_answer = asyncio.run(measure(server.url, args.tries))
    print(f"wait_for_messages after a post, {args.tries} tries")
    print(line("POST sent -> tool result", from_start))
    print(line("POST answered (201) -> tool result", from_answer))


if __name__ == "__main__":
    main()
