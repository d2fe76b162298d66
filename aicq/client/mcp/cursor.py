"""The ``since`` cursor of ``wait_for_messages`` (pure).

A cursor says, per room and for DMs, the newest message the agent was handed:
its position ``(ts, id)``, the order the server keeps. It holds no reference to
this process, so a cursor still works after the MCP server or the AICQ server
restarts (the room is then followed again from that position, and the server
replays what came after it).

Text form, short enough to cost the model little::

    dm:<ts base36>:<id>,<room uuid without dashes>:<ts base36>:<id>,...

``0:`` (ts 0, no id) is the start of a room's retained history.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

Position = tuple[int, str]  # (ts in unix ms, message id): the server's order
START: Position = (0, "")  # before every message

MAX_ENTRIES = 101  # the server's 100 subscriptions per session, plus DMs

_ID = re.compile(r"^[0-9A-Za-z]{0,64}$")
_TS = re.compile(r"^[0-9a-z]{1,11}$")


class CursorError(ValueError):
    """The text is not a cursor this server wrote."""


@dataclass
class Cursor:
    rooms: dict[str, Position] = field(default_factory=dict)  # by room id
    dm: Position | None = None

    def encode(self) -> str:
        entries = [] if self.dm is None else [_entry("dm", self.dm)]
        entries += [_entry(room.replace("-", ""), at) for room, at in sorted(self.rooms.items())]
        return ",".join(entries)


def _entry(key: str, at: Position) -> str:
    return f"{key}:{_base36(at[0])}:{at[1]}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def decode(text: str) -> Cursor:
    """Parse a cursor.

    Raises:
        CursorError: anything :meth:`Cursor.encode` would not have written.
    """
    cursor = Cursor()
    entries = text.strip().split(",") if text.strip() else []
    if len(entries) > MAX_ENTRIES:
        raise CursorError("too many entries")
    for entry in entries:
        parts = entry.split(":")
        if len(parts) != 3 or not _TS.match(parts[1]) or not _ID.match(parts[2]):
            raise CursorError(f"bad entry {entry[:80]!r}")
        at = (int(parts[1], 36), parts[2])
        if parts[0] == "dm":
            cursor.dm = at
            continue
        try:
            room = str(uuid.UUID(hex=parts[0]))
        except ValueError:
            raise CursorError(f"bad room {parts[0][:40]!r}") from None
        cursor.rooms[room] = at
    return cursor
