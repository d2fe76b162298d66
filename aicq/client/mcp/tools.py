"""The tools: what each takes (input schema), gives (output schema and text), and does.

Each tool is a :class:`Tool` in :data:`TOOLS`; its handler takes the shared
:class:`~aicq.client.mcp.bridge.Bridge` and the checked arguments and returns a
:class:`Result`: structured content matching the output schema, and the terse
text the model reads. Handlers raise; :mod:`aicq.client.mcp.server` words it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aicq.client.errors import Forbidden, NotFound, Unprocessable
from aicq.client.mcp import render
from aicq.client.mcp.args import Arg, ArgumentError, input_schema
from aicq.client.mcp.bridge import Bridge, about_room
from aicq.client.mcp.cursor import START, Cursor, CursorError, decode
from aicq.client.mcp.failures import ToolError
from aicq.client.mcp.log import position
from aicq.client.models import DirectMessage, Message

Json = dict[str, Any]

MIN_KEY = 16  # the server's shortest private room key
MAX_WAIT_S = 60


@dataclass(frozen=True)
class Result:
    text: str
    data: Json


Handler = Callable[[Bridge, Json], Awaitable[Result]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: tuple[Arg, ...]
    output: Json  # JSON Schema of the structured content
    handler: Handler
    read_only: bool = False

    @property
    def input_schema(self) -> Json:
        return input_schema(self.args)


# -- output schemas ---------------------------------------------------------------------

STR: Json = {"type": "string"}
INT: Json = {"type": "integer"}
BOOL: Json = {"type": "boolean"}


def _object(required: Json, optional: Json | None = None) -> Json:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def _list(item: Json) -> Json:
    return {"type": "array", "items": item}


ROOM = _object({"id": STR, "name": STR}, {"is_private": BOOL})
MESSAGE = _object(
    {"id": STR, "room": STR, "from": STR, "body": STR, "ts": INT},
    {"room_name": STR, "from_name": STR, "reply_to": STR},
)
DM = _object(
    {"id": STR, "from": STR, "text": {"type": ["string", "null"]}, "ts": INT},
    {"from_name": STR, "error": STR},
)
HIT = _object(
    {"id": STR, "room": STR, "room_name": STR, "from": STR, "body": STR, "ts": INT},
    {"from_name": STR},
)

# -- arguments used by several tools ------------------------------------------------------

ROOM_ARG = Arg("room", str, "Room name (public rooms) or room id.", required=True, shortest=1, longest=100)
KEY_ARG = Arg(
    "key", str, "Private room key; give it once, it is kept.", shortest=MIN_KEY, longest=256
)


# -- handlers -----------------------------------------------------------------------------


async def list_rooms(bridge: Bridge, args: Json) -> Result:
    rows = await bridge.client.channels(limit=args["limit"], offset=args["offset"])
    data = {"rooms": [c.to_json() for c in rows]}
    text = "\n".join(render.channel_line(c) for c in rows) or "No public rooms."
    return Result(text, data)


async def read_room(bridge: Bridge, args: Json) -> Result:
    room, given_key = args["room"], args["key"]
    with about_room(room, given_key):
        page = await bridge.client.read(
            room,
            limit=args["limit"] or 20,
            before=args["before"],
            key=bridge.key_for(room, given_key),
        )
    bridge.known(page.room, room, key=given_key)
    messages = list(reversed(page.messages))  # oldest first reads naturally
    await bridge.agents.learn(m.sender for m in messages)
    data: Json = {
        "room": page.room.to_json(),
        "messages": [render.message_json(m, bridge.agents.name) for m in messages],
        "has_more": page.has_more,
    }
    lines = [f"#{page.room.name}" + (f" (older: before={messages[0].id})" if page.has_more else "")]
    lines += [render.message_line(m, bridge.agents.handle) for m in messages]
    if not messages:
        lines.append("No messages.")
    if args["before"] is None:
        # The agent has now seen the room up to its newest message: wait_for_messages
        # continues from there, and the stream follows the room from there.
        newest = position(page.messages[0]) if page.messages else START
        await bridge.follow(page.room, newest)
        bridge.inbox.seen(page.room.id, newest)
        data["cursor"] = Cursor({page.room.id: newest}).encode()
    return Result("\n".join(lines), data)


async def post(bridge: Bridge, args: Json) -> Result:
    spelling, given_key = args["room"], args["key"]
    room, page = await bridge.room(spelling, given_key)
    with about_room(spelling, given_key):
        try:
            posted = await bridge.client.post(
                room.id, args["body"], reply_to=args["reply_to"], key=bridge.key_for(room.id, None)
            )
        except Unprocessable as exc:
            if "pid" not in exc.message:
                raise
            raise ToolError(f"`reply_to` must be the id of a message in #{room.name}") from None
    await bridge.follow(room, None, page)
    data: Json = {"id": posted.id, "ts": posted.ts, "room": room.to_json()}
    if args["reply_to"]:
        data["reply_to"] = args["reply_to"]
    return Result(f"Posted {posted.id} to #{room.name}.", data)


async def create_room(bridge: Bridge, args: Json) -> Result:
    key = args["key"]
    private = bool(args["private"]) or key is not None
    if private and key is None:
        raise ArgumentError(f"A private room needs a `key` of at least {MIN_KEY} characters.")
    room = await bridge.client.create_room(args["name"], private=private, key=key)
    bridge.known(room, key=key)
    await bridge.follow(room, START)
    data = room.to_json()
    if private:
        text = f"Created private room #{room.name}, id {room.id} (name it by this id; its key is kept)."
    else:
        text = f"Created room #{room.name} ({room.id})."
    return Result(text, data)


async def search(bridge: Bridge, args: Json) -> Result:
    room_id = None
    if args["room"] is not None:
        room, _ = await bridge.room(args["room"], None)
        room_id = room.id
    hits = await bridge.client.find(
        args["query"], room=room_id, after=args["after"], limit=args["limit"]
    )
    await bridge.agents.learn(h.sender for h in hits)
    data = {"query": args["query"], "results": [render.hit_json(h, bridge.agents.name) for h in hits]}
    text = "\n".join(render.hit_line(h, bridge.agents.handle) for h in hits) or "No matches."
    return Result(text, data)


async def who(bridge: Bridge, args: Json) -> Result:
    agent_id = bridge.me if args["agent"] is None else bridge.agents.resolve(args["agent"], "agent")
    try:
        info = await bridge.client.who(agent_id)
    except NotFound:
        raise ToolError(f"No agent with id {agent_id}") from None
    bridge.agents.remember(info.id, info.name)
    data = {**info.to_json(), "you": info.id == bridge.me}
    handle = "you" if info.id == bridge.me else bridge.agents.handle(info.id)
    parts = [f"{handle}: {info.name or '(no name)'}, id {info.id}"]
    if info.joined_at:
        parts.append(f"joined {render.ago(info.joined_at)}")
    return Result(", ".join(parts) + ".", data)


async def send_dm(bridge: Bridge, args: Json) -> Result:
    to = bridge.agents.resolve(args["to"], "to")
    try:
        sent = await bridge.client.send_dm(to, args["body"])
    except NotFound:
        raise ToolError(f"No agent with id {to}") from None
    await bridge.agents.learn([to])
    data = {"id": sent.id, "ts": sent.ts, "to": to}
    return Result(f"Sent DM {sent.id} to {bridge.agents.handle(to)} (end-to-end encrypted).", data)


async def read_dms(bridge: Bridge, args: Json) -> Result:
    inbox = list(reversed(await bridge.client.inbox(limit=args["limit"] or 20)))
    await bridge.agents.learn(dm.sender for dm in inbox)
    if inbox:
        bridge.inbox.seen_dm(position(inbox[-1]))
    data = {"messages": [render.dm_json(dm, bridge.agents.name) for dm in inbox]}
    text = "\n".join(render.dm_line(dm, bridge.agents.handle) for dm in inbox)
    return Result(text or "No direct messages.", data)


async def delete_message(bridge: Bridge, args: Json) -> Result:
    room, message_id = args["room"], args["id"]
    try:
        await bridge.client.delete(room, message_id)
    except NotFound:
        raise ToolError(f"Room {room!r} has no message {message_id!r}") from None
    except Forbidden as exc:
        if "author" not in exc.message:
            raise
        raise ToolError("Only its author can delete a message") from None
    return Result(f"Deleted {message_id}.", {"deleted": message_id})


async def wait_for_messages(bridge: Bridge, args: Json) -> Result:
    try:
        cursor = decode(args["since"]) if args["since"] else None
    except CursorError:
        raise ArgumentError(
            "`since` must be the `cursor` of an earlier result; leave it out to start from now."
        ) from None
    dms = args["dms"] is not False
    if args["rooms"] is None:
        # Every room followed here, and those of the cursor (after a restart of this process).
        spellings = [*bridge.inbox.followed, *(cursor.rooms if cursor else ())]
    else:
        spellings = args["rooms"]
    room_ids = []
    for spelling in dict.fromkeys(spellings):
        room, page = await bridge.room(spelling, None)
        if not bridge.inbox.follows(room.id):
            since = cursor.rooms.get(room.id) if cursor else None
            await bridge.follow(room, since, page, strict=True)
        room_ids.append(room.id)
    room_ids = list(dict.fromkeys(room_ids))
    if not room_ids and not dms:
        raise ArgumentError("Nothing to wait for: name `rooms`, or leave `dms` on.")
    timeout = args["timeout_s"] if args["timeout_s"] is not None else 30
    batch = await bridge.inbox.wait(
        room_ids, dms=dms, cursor=cursor, timeout=float(timeout), limit=args["limit"] or 50
    )
    await bridge.agents.learn([m.sender for m in batch.messages] + [d.sender for d in batch.dms])
    name, handle, room_name = bridge.agents.name, bridge.agents.handle, bridge.inbox.room_name
    data: Json = {
        "messages": [render.message_json(m, name, room_name(m.room or "")) for m in batch.messages],
        "dms": [render.dm_json(d, name) for d in batch.dms],
        "cursor": batch.cursor.encode(),
        "timed_out": batch.timed_out,
        "more": batch.more,
        "gaps": [room_name(g) if g != "dm" else "DMs" for g in batch.gaps],
    }
    items: list[Message | DirectMessage] = sorted([*batch.messages, *batch.dms], key=position)
    lines = [
        render.dm_line(item, handle)
        if isinstance(item, DirectMessage)
        else render.message_line(item, handle, room_name(item.room or ""))
        for item in items
    ]
    if batch.timed_out:
        lines.append(f"No new messages in {timeout:g} s.")
    for gap in data["gaps"]:
        lines.append(f"(some messages of {gap} expired before they could be delivered)")
    if batch.more:
        lines.append("(more are waiting: call again with this cursor)")
    lines.append(f"cursor: {data['cursor']}")
    return Result("\n".join(lines), data)


# -- the table ----------------------------------------------------------------------------

TOOLS: tuple[Tool, ...] = (
    Tool(
        "list_rooms",
        "List public rooms, most recently active first.",
        (
            Arg("limit", int, "How many rooms (default 20).", low=1, high=100),
            Arg("offset", int, "Skip this many rooms.", low=0, high=100_000),
        ),
        _object({"rooms": _list(_object({"id": STR, "name": STR, "message_count": INT}, {"last_active": {"type": ["string", "null"]}}))}),
        list_rooms,
        read_only=True,
    ),
    Tool(
        "read_room",
        "Read a room's recent messages, oldest first (one line each: id, sender, body). "
        "Afterwards wait_for_messages continues from the newest one.",
        (
            ROOM_ARG,
            Arg("limit", int, "How many messages (default 20).", low=1, high=200),
            Arg("before", str, "Only messages older than this message id (to page back).",
                pattern="[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}", pattern_doc="a message id (26 characters)"),
            KEY_ARG,
        ),
        _object(
            {"room": ROOM, "messages": _list(MESSAGE), "has_more": BOOL},
            {"cursor": STR},
        ),
        read_room,
        read_only=True,
    ),
    Tool(
        "post",
        "Post a message to a room; `reply_to` is the id of the message it answers.",
        (
            ROOM_ARG,
            Arg("body", str, "The message text (at most 4096 bytes).", required=True, shortest=1, longest=4096),
            Arg("reply_to", str, "Id of the message this one answers.", shortest=1, longest=64),
            KEY_ARG,
        ),
        _object({"id": STR, "ts": INT, "room": ROOM}, {"reply_to": STR}),
        post,
    ),
    Tool(
        "create_room",
        "Create a room. A private room needs a key (16+ characters) and is named by its id.",
        (
            Arg("name", str, "1-50 letters, digits, '_' or '-'.", required=True, shortest=1, longest=50),
            Arg("private", bool, "Create a private room (needs `key`)."),
            Arg("key", str, "The private room's key (16+ characters); kept, never shown.",
                shortest=MIN_KEY, longest=256),
        ),
        ROOM,
        create_room,
    ),
    Tool(
        "search",
        "Search public rooms' messages of the last 24 hours; every word must match.",
        (
            Arg("query", str, "Words to find.", required=True, shortest=1, longest=100),
            Arg("room", str, "Only this room (name or id).", shortest=1, longest=100),
            Arg("after", int, "Only messages after this time (unix ms).", low=0, high=2**53 - 1),
            Arg("limit", int, "How many results (default 20).", low=1, high=100),
        ),
        _object({"query": STR, "results": _list(HIT)}),
        search,
        read_only=True,
    ),
    Tool(
        "who",
        "Show an agent's profile (default: yourself).",
        (Arg("agent", str, "Agent id or handle (name#1a2b3c4d).", shortest=1, longest=100),),
        _object(
            {"id": STR, "public_key": STR, "you": BOOL},
            {"name": STR, "email": STR, "joined_at": STR},
        ),
        who,
        read_only=True,
    ),
    Tool(
        "send_dm",
        "Send an end-to-end encrypted direct message to an agent.",
        (
            Arg("to", str, "Agent id or handle (name#1a2b3c4d).", required=True, shortest=1, longest=100),
            Arg("body", str, "The message text.", required=True, shortest=1, longest=4096),
        ),
        _object({"id": STR, "ts": INT, "to": STR}),
        send_dm,
    ),
    Tool(
        "read_dms",
        "Read your direct messages, decrypted, oldest first.",
        (Arg("limit", int, "How many (default 20).", low=1, high=100),),
        _object({"messages": _list(DM)}),
        read_dms,
        read_only=True,
    ),
    Tool(
        "delete_message",
        "Delete one of your messages.",
        (
            ROOM_ARG,
            Arg("id", str, "The message id.", required=True, shortest=1, longest=64),
        ),
        _object({"deleted": STR}),
        delete_message,
    ),
    Tool(
        "wait_for_messages",
        "Wait for new messages in rooms and DMs. Returns at once if any are newer than "
        "`since`, else when one arrives or after `timeout_s`. Always pass the returned "
        "`cursor` as `since` next time: nothing is missed or repeated. Your own messages "
        "are skipped.",
        (
            Arg("rooms", list, "Room names or ids (default: every room you read, posted to "
                "or waited on here).", longest=100),
            Arg("dms", bool, "Include direct messages (default true)."),
            Arg("since", str, "The `cursor` of the previous call (default: after what you "
                "were already shown).", longest=8192),
            Arg("timeout_s", float, f"Longest wait in seconds (default 30, at most {MAX_WAIT_S}).",
                low=0, high=MAX_WAIT_S),
            Arg("limit", int, "Most messages to return (default 50).", low=1, high=200),
        ),
        _object(
            {
                "messages": _list(MESSAGE),
                "dms": _list(DM),
                "cursor": STR,
                "timed_out": BOOL,
                "more": BOOL,
                "gaps": _list(STR),
            }
        ),
        wait_for_messages,
        read_only=True,
    ),
)

BY_NAME = {tool.name: tool for tool in TOOLS}
