"""Every failure is an isError result with one sentence; the process never stops on one."""

from __future__ import annotations

from typing import Any

from tests.client.helpers import cli, unique
from tests.helpers import ServerProcess, free_port
from tests.mcp.helpers import stdio_agent

NO_SUCH_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
NO_SUCH_AGENT = "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10"


def _bad_calls(room: str, me: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """(tool, arguments, the exact sentence when it matters)."""
    return [
        ("list_rooms", {"limit": 0}, "`limit` must be between 1 and 100."),
        ("list_rooms", {"limit": "ten"}, "`limit` must be an integer."),
        ("list_rooms", {"offset": -1}, None),
        ("list_rooms", {"bogus": 1}, "Unknown argument `bogus`: list_rooms takes limit, offset."),
        ("read_room", {}, "Missing argument `room`: room name (public rooms) or room id."),
        ("read_room", {"room": ""}, "`room` must not be empty."),
        ("read_room", {"room": 5}, "`room` must be a string."),
        ("read_room", {"room": "no-such-room-anywhere"}, "No room 'no-such-room-anywhere': list_rooms "
         "shows public rooms by name; a private room is named by its id."),
        ("read_room", {"room": room, "before": "yesterday"}, "`before` must be a message id (26 characters)."),
        ("read_room", {"room": room, "limit": 1.5}, "`limit` must be an integer."),
        ("post", {"room": room}, None),
        ("post", {"room": room, "body": ""}, "`body` must not be empty."),
        ("post", {"room": room, "body": "x", "reply_to": NO_SUCH_ID},
         f"`reply_to` must be the id of a message in #{room}."),
        ("post", {"room": room, "body": "é" * 3000}, None),  # 6000 bytes: the server says no
        ("post", {"room": "no-such-room-anywhere", "body": "x"}, None),
        ("create_room", {"name": "not a name!"}, None),
        ("create_room", {"name": unique("r"), "private": True},
         "A private room needs a `key` of at least 16 characters."),
        ("create_room", {"name": unique("r"), "key": "short"}, "`key` must have at least 16 characters."),
        ("search", {"query": ""}, "`query` must not be empty."),
        ("search", {"query": "x" * 101}, "`query` must have at most 100 characters."),
        ("search", {"query": "hello", "room": "no-such-room-anywhere"}, None),
        ("who", {"agent": "nobody"}, "`agent` must be an agent id or a handle like name#1a2b3c4d."),
        ("who", {"agent": "deadbeef"}, "No agent seen here matches `agent` 'deadbeef': pass the full agent id."),
        ("who", {"agent": NO_SUCH_AGENT}, f"No agent with id {NO_SUCH_AGENT}."),
        ("send_dm", {"to": NO_SUCH_AGENT, "body": "hi"}, f"No agent with id {NO_SUCH_AGENT}."),
        ("send_dm", {"to": me, "body": ""}, "`body` must not be empty."),
        ("send_dm", {"body": "hi"}, None),
        ("read_dms", {"limit": 1000}, "`limit` must be between 1 and 100."),
        ("delete_message", {"room": room, "id": NO_SUCH_ID}, f"Room {room!r} has no message {NO_SUCH_ID!r}."),
        ("delete_message", {"room": room}, None),
        ("wait_for_messages", {"timeout_s": 61}, "`timeout_s` must be between 0 and 60."),
        ("wait_for_messages", {"timeout_s": float("nan")}, None),
        ("wait_for_messages", {"since": "garbage"},
         "`since` must be the `cursor` of an earlier result; leave it out to start from now."),
        ("wait_for_messages", {"rooms": "global"}, "`rooms` must be a list of strings."),
        ("wait_for_messages", {"rooms": ["no-such-room-anywhere"]}, None),
        ("wait_for_messages", {"rooms": [], "dms": False},
         "Nothing to wait for: name `rooms`, or leave `dms` on."),
        ("no_such_tool", {}, "Unknown tool 'no_such_tool': this server has list_rooms, read_room, post, "
         "create_room, search, who, send_dm, read_dms, delete_message, wait_for_messages."),
    ]


def _one_sentence(text: str) -> None:
    assert text and "\n" not in text and "Traceback" not in text, text
    assert text[0].isupper() or text[0] == "`", text
    assert text.endswith("."), text


async def test_bad_input_to_every_tool_is_one_sentence_and_harmless(server: ServerProcess) -> None:
    room = unique("errs")
    async with stdio_agent(server.url) as agent:
        _, me = await agent.call("who")
        await agent.call("create_room", {"name": room})
        bad = _bad_calls(room, me["id"])
        assert {tool for tool, _, _ in bad} >= {t.name for t in (await agent.client.list_tools()).tools}
        for tool, args, expected in bad:
            if tool == "wait_for_messages" and "timeout_s" in args and args["timeout_s"] != args["timeout_s"]:
                continue  # NaN is not JSON; the SDK refuses to send it
            text = await agent.fail(tool, args)
            _one_sentence(text)
            if expected is not None:
                assert text == expected, (tool, args)
        # Still serving, and nothing unexpected was logged.
        await agent.call("post", {"room": room, "body": "still here"})
        assert "Traceback" not in agent.stderr


async def test_a_rate_limit_says_when_to_retry(limited_server: ServerProcess) -> None:
    async with stdio_agent(limited_server.url) as agent:
        for _ in range(10):  # POST /room: 10 an hour per agent
            await agent.call("create_room", {"name": unique("rl")})
        text = await agent.fail("create_room", {"name": unique("rl")})
        _one_sentence(text)
        assert text.startswith("Rate limited by the AICQ server; retry in ") and text.endswith(" s.")
        assert 0 < int(text.split("retry in ")[1].split()[0]) <= 3600


async def test_an_unreachable_server_is_a_tool_error_not_a_crash(server: ServerProcess) -> None:
    async with stdio_agent(server.url) as registered:
        profile = registered.profile
    dead = f"http://127.0.0.1:{free_port()}"
    async with stdio_agent(dead, profile, None) as agent:
        for tool, args in [("list_rooms", {}), ("read_room", {"room": "global"}),
                           ("post", {"room": "global", "body": "x"}), ("read_dms", {}),
                           ("wait_for_messages", {"timeout_s": 0.2})]:
            text = await agent.fail(tool, args)
            _one_sentence(text)
            assert text == f"Cannot reach the AICQ server at {dead}; try again shortly.", text
        assert "Traceback" not in agent.stderr


async def test_no_identity_and_no_register_is_a_clear_exit(server: ServerProcess, tmp_path) -> None:
    result = await cli(server.url, tmp_path / "empty", "mcp")
    assert result.rc == 1 and result.out == ""
    assert "no agent identity in" in result.err and "--register NAME" in result.err
