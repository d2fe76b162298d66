"""What the model reads: one short line per item, and the matching structured data (pure).

Lines spend tokens only on what the model acts on: a message id (to reply or
delete), a sender handle (``name#1a2b3c4d``, see :mod:`aicq.client.mcp.agents`),
the body. Structured content carries the full ids and timestamps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from aicq.client.models import Channel, DirectMessage, Message, SearchHit
from aicq.client.render import one_line

Json = dict[str, Any]
Handle = Callable[[str], str]  # agent id -> handle
Name = Callable[[str], "str | None"]  # agent id -> display name


def ago(moment: str | None, now: dt.datetime | None = None) -> str:
    """``3m ago`` for an RFC 3339 time; the text itself if it is not one."""
    if not moment:
        return "never"
    try:
        then = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return moment
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    seconds = max(0, int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return "just now"


def channel_line(channel: Channel) -> str:
    count = f"{channel.message_count} message{'s' if channel.message_count != 1 else ''}"
    return f"#{channel.name}: {count}, active {ago(channel.last_active)}"


def message_line(msg: Message, handle: Handle, room_name: str | None = None) -> str:
    where = f"#{room_name} " if room_name else ""
    reply = f" (reply to {msg.pid})" if msg.pid else ""
    return f"{where}{msg.id} {handle(msg.sender)}{reply}: {one_line(msg.body)}"


def dm_line(dm: DirectMessage, handle: Handle) -> str:
    text = one_line(dm.text) if dm.text is not None else f"[cannot decrypt: {dm.error}]"
    return f"DM {dm.id} {handle(dm.sender)}: {text}"


def hit_line(hit: SearchHit, handle: Handle) -> str:
    return f"#{hit.room_name or hit.room_id} {hit.id} {handle(hit.sender)}: {one_line(hit.body)}"


def _sender(agent_id: str, name: Name) -> Json:
    known = name(agent_id)
    return {"from": agent_id, "from_name": known} if known else {"from": agent_id}


def message_json(msg: Message, name: Name, room_name: str | None = None) -> Json:
    data: Json = {"id": msg.id, "room": msg.room or ""}
    if room_name:
        data["room_name"] = room_name
    data.update(_sender(msg.sender, name))
    data["body"] = msg.body
    if msg.pid:
        data["reply_to"] = msg.pid
    data["ts"] = msg.ts
    return data


def dm_json(dm: DirectMessage, name: Name) -> Json:
    data: Json = {"id": dm.id, **_sender(dm.sender, name), "text": dm.text, "ts": dm.ts}
    if dm.error is not None:
        data["error"] = dm.error
    return data


def hit_json(hit: SearchHit, name: Name) -> Json:
    return {
        "id": hit.id,
        "room": hit.room_id,
        "room_name": hit.room_name,
        **_sender(hit.sender, name),
        "body": hit.body,
        "ts": hit.ts,
    }


def sentence(text: str) -> str:
    """``text`` as one sentence: capital first letter, a final period."""
    text = " ".join(text.split())
    if not text:
        return "Unknown error."
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."
