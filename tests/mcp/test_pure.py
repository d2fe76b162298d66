"""The MCP server's pure parts: argument checks, cursors, logs, handles, wording."""

from __future__ import annotations

import datetime as dt

import jsonschema
import pytest

from aicq.client import AsyncClient
from aicq.client.errors import RateLimited, ServerError, TransportError
from aicq.client.mcp.agents import Directory, display_name
from aicq.client.mcp.args import Arg, ArgumentError, input_schema, parse
from aicq.client.mcp.command import http_address
from aicq.client.mcp.cursor import START, Cursor, CursorError, decode
from aicq.client.mcp.failures import explain
from aicq.client.mcp.log import Log
from aicq.client.mcp.render import ago, sentence
from aicq.client.mcp.tools import TOOLS
from aicq.client.models import Message

ROOM = "11111111-1111-4111-8111-111111111111"
ARGS = (
    Arg("room", str, "Room name.", required=True, shortest=1, longest=10),
    Arg("limit", int, "How many.", low=1, high=200),
    Arg("wait", float, "Seconds.", low=0, high=60),
    Arg("rooms", list, "Rooms.", longest=2),
    Arg("dms", bool, "DMs."),
    Arg("key", str, "Key.", shortest=16),
)


def test_arguments_are_checked_against_the_schema_they_declare() -> None:
    schema = input_schema(ARGS)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"room": "lobby", "limit": 5, "wait": 0.5, "rooms": ["a"], "dms": False}
    jsonschema.validate(good, schema)
    assert parse("t", ARGS, good) == {**good, "key": None}
    assert parse("t", ARGS, {"room": "x", "limit": 3.0, "wait": 2, "dms": None})["limit"] == 3
    cases = {
        "`limit` must be an integer.": {"limit": True},
        "`limit` must be between 1 and 200.": {"limit": 201},
        "`wait` must be a number.": {"wait": "1"},
        "`rooms` must be a list of strings.": {"rooms": ["a", 1]},
        "`rooms` must have at most 2 items.": {"rooms": ["a", "b", "c"]},
        "`dms` must be true or false.": {"dms": "yes"},
        "`room` must have at most 10 characters.": {"room": "x" * 11},
        "`key` must have at least 16 characters.": {"key": "hunter2"},
        "Unknown argument `zz`: t takes room, limit, wait, rooms, dms, key.": {"zz": 1},
    }
    for message, extra in cases.items():
        with pytest.raises(ArgumentError) as caught:
            parse("t", ARGS, {"room": "x", **extra})
        assert str(caught.value) == message
        assert "hunter2" not in str(caught.value)
    with pytest.raises(ArgumentError, match=r"^Missing argument `room`: room name\.$"):
        parse("t", ARGS, {})


def test_every_tool_declares_valid_schemas_and_one_line_descriptions() -> None:
    for tool in TOOLS:
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        jsonschema.Draft202012Validator.check_schema(tool.output)
        assert tool.description.endswith(".") and all(a.doc.endswith(".") for a in tool.args)


def test_a_cursor_round_trips_and_refuses_anything_else() -> None:
    cursor = Cursor({ROOM: (1_700_000_000_123, "01HF00000000000000000000AB")}, dm=START)
    text = cursor.encode()
    assert text == "dm:0:,11111111111141118111111111111111:loyw3v5n:01HF00000000000000000000AB"
    assert decode(text) == cursor
    assert decode("") == Cursor()
    for bad in ("garbage", "dm:0", "xyz:1:AB", "dm:-1:AB", f"{ROOM}:1:a/b", ",".join(["dm:0:"] * 102)):
        with pytest.raises(CursorError):
            decode(bad)


def _msg(msg_id: str, ts: int) -> Message:
    return Message(msg_id, "a", "b", ts, ROOM)


def test_a_log_holds_everything_above_its_floor_once_and_in_order() -> None:
    log: Log[Message] = Log((10, "B"), capacity=3)
    assert log.covers((10, "B")) and not log.covers((10, "A"))
    assert not log.add(_msg("A", 9)) and not log.add(_msg("B", 10))  # at or below the floor
    for msg_id, ts in [("D", 12), ("C", 11), ("E", 12)]:
        assert log.add(_msg(msg_id, ts))
    assert not log.add(_msg("C", 11))
    assert [m.id for m in log.after((10, "B"))] == ["C", "D", "E"]
    assert [m.id for m in log.after((12, "D"))] == ["E"]
    log.add(_msg("F", 13))  # over capacity: C leaves and the floor rises to it
    assert log.floor == (11, "C") and [m.id for m in log.after(START)] == ["D", "E", "F"]
    log.remove("E")
    assert [m.id for m in log.after(START)] == ["D", "F"] and log.newest() == (13, "F")
    log.extend_down([_msg("C", 11)], (10, "B"))
    assert log.floor == (10, "B") and [m.id for m in log.after(START)][:1] == ["C"]


async def test_handles_name_agents_briefly_and_resolve_back() -> None:
    me = "aaaaaaaa-1111-4111-8111-111111111111"
    bob = "bbbbbbbb-2222-4222-8222-222222222222"
    client = AsyncClient("http://127.0.0.1:9")
    try:
        agents = Directory(client, me)
        agents.remember(bob, "Bob the\nBuilder #1")
        assert agents.handle(bob) == "Bob the ⏎ Builder 1#bbbbbbbb" and agents.handle(me) == "you"
        assert agents.resolve("Bob the ⏎ Builder 1#bbbbbbbb", "to") == bob
        assert agents.resolve("bbbbbbbb", "to") == bob and agents.resolve("you", "to") == me
        assert agents.resolve(bob.upper(), "to") == bob
        with pytest.raises(ArgumentError, match="No agent seen here matches"):
            agents.resolve("cccccccc", "to")
        with pytest.raises(ArgumentError, match="must be an agent id or a handle"):
            agents.resolve("bob", "to")
    finally:
        await client.aclose()
    assert display_name("x" * 100) == "x" * 32 and display_name(None) == ""


def test_wording() -> None:
    assert sentence("  room not found ") == "Room not found."
    assert explain(RateLimited("rate limit exceeded", retry_after=41.2), "u") == (
        "Rate limited by the AICQ server; retry in 42 s."
    )
    assert explain(TransportError("refused"), "http://x") == (
        "Cannot reach the AICQ server at http://x; try again shortly."
    )
    assert explain(ServerError("degraded", 503), "u").startswith("The AICQ server failed (503: degraded)")
    assert explain(KeyError("boom"), "u").startswith("Internal error in the AICQ MCP server (KeyError)")
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert ago("2026-01-01T11:57:00Z", now) == "3m ago" and ago("2025-12-30T12:00:00Z", now) == "2d ago"
    assert ago(None, now) == "never" and ago("soon", now) == "soon"


def test_http_address_defaults_to_loopback() -> None:
    assert http_address("8765") == ("127.0.0.1", 8765)
    assert http_address("0.0.0.0:8765") == ("0.0.0.0", 8765)
    assert http_address("[::1]:8765") == ("::1", 8765)
    for bad in ("nope", "host:", "1:99999", ":0"):
        with pytest.raises(ValueError, match="--http wants"):
            http_address(bad)
