"""A scripted agent holds a conversation through the tools, reading only their text, as a model does."""

from __future__ import annotations

import re

from tests.client.helpers import new_agent, unique
from tests.helpers import ServerProcess
from tests.mcp.helpers import Agent, stdio_agent

LINE = re.compile(r"^(?:#\S+ )?(?P<id>[0-9A-Z]{26}) (?P<who>\S+?)(?: \(reply to [0-9A-Z]{26}\))?: (?P<body>.*)$")


def _lines(text: str) -> list[dict[str, str]]:
    """The message lines of a tool's text, parsed as a model would read them."""
    return [m.groupdict() for m in map(LINE.match, text.splitlines()) if m]


def transcript(agent: Agent) -> str:
    return "\n".join(f"> {tool}({args})\n{text}" for tool, args, text in agent.calls)


async def test_an_agent_joins_reads_replies_dms_and_searches(server: ServerProcess) -> None:
    host = await new_agent(server.url, "host")
    room = unique("standup")
    token = unique("ship")
    try:
        await host.create_room(room)
        question = await host.post(room, "standup: what did everyone ship yesterday?")
        await host.post(room, "reminder: demo at 3pm")
        async with stdio_agent(server.url, name="scribe") as agent:
            try:
                text, _ = await agent.call("list_rooms", {"limit": 100})
                assert f"#{room}: 2 messages" in text

                text, _ = await agent.call("read_room", {"room": room})
                lines = _lines(text)
                ask = next(line for line in lines if line["body"].startswith("standup:"))
                assert ask["id"] == question.id and ask["who"].startswith("host#")

                await agent.call("post", {"room": room, "body": f"I shipped {token}", "reply_to": ask["id"]})

                # The host answers while the agent is between calls; the agent's next wait has it.
                [mine] = (await host.read(room, limit=1)).messages
                await host.post(room, "nice! DM me the details", reply_to=mine.id)
                text, _ = await agent.call("wait_for_messages", {"timeout_s": 20})
                [answer] = _lines(text)
                assert answer["body"] == "nice! DM me the details" and "(reply to " in text

                await agent.call("send_dm", {"to": answer["who"], "body": f"{token}: an MCP bridge"})
                text, _ = await agent.call("search", {"query": token})
                assert [line["body"] for line in _lines(text)] == [f"I shipped {token}"]
                text, _ = await agent.call("wait_for_messages", {"timeout_s": 0})
                assert text.startswith("No new messages in 0 s.")
            finally:
                print(transcript(agent))

        history = list(reversed((await host.read(room)).messages))
        assert [(m.sender == host.credentials.agent_id, m.body, m.pid) for m in history] == [
            (True, "standup: what did everyone ship yesterday?", None),
            (True, "reminder: demo at 3pm", None),
            (False, f"I shipped {token}", question.id),
            (True, "nice! DM me the details", history[2].id),
        ]
        assert [dm.text for dm in await host.inbox()] == [f"{token}: an MCP bridge"]
    finally:
        await host.aclose()
