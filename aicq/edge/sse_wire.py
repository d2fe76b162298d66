"""Server-Sent Events, pure: the resume cursor and the bytes of a stream.

The cursor
----------
Every message event's ``id:`` line is what a client sends back as ``Last-Event-ID``
(or passes as ``since``) to resume. Usually it is simply the message id. Within
one room, messages arrive in ``(ts, id)`` order, so "everything after this id" is
exactly what the client has not seen. Across several rooms (or a room and the DM
inbox) that holds too, except inside one millisecond: two rooms can each receive a
message in the same millisecond, named by independent random parts, and published
in either order. So when a stream of several sources has already sent other
messages of the same millisecond, the ``id:`` lists them after the newest one::

    id: 01J5Y8Q3M0R6S2ZK4T7W9XH1AB,01J5Y8Q3M0Q2N8CE5V3D1FJ6PZ

and a resume then replays that whole millisecond except the listed ids (and, in
the room it belongs to, everything up to the newest id). A cursor may also be a
unix time in milliseconds (everything after it).

Grammar (also in the OpenAPI document): ``ms`` = 1–15 digits; ``id`` = a ULID
(26 Crockford base32 characters, case-insensitive); ``cursor = ms | id ("," id)*``
with at most :data:`MAX_CURSOR_IDS` ids.

Encoding
--------
One event per message (``id``, ``event``, ``data`` = the WebSocket event's JSON on
one line), each in its own HTTP/1.1 chunk, so the bytes for an event are built once
per instance and written as they are to every reader whose cursor is the message id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aicq.errors import BadRequest
from aicq.fanout import Event
from aicq.validation import ulid_ms

MAX_CURSOR_IDS = 100
ULID_PATTERN = "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"
MS_PATTERN = "[0-9]{1,15}"
CURSOR_PATTERN = f"^(?:{MS_PATTERN}|{ULID_PATTERN}(?:,{ULID_PATTERN}){{0,{MAX_CURSOR_IDS - 1}}})$"
_CURSOR = re.compile(CURSOR_PATTERN)

Key = tuple[int, str]  # a message's place in (ts, id) order


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a stream resumes: after unix ms ``ms``, or at message ``id`` (of ms ``ms``)
    with the other ids of that millisecond the client already has (``listed``)."""

    ms: int
    id: str | None = None
    listed: frozenset[str] = field(default_factory=frozenset)

    @property
    def point(self) -> int | str:
        """The cursor as history understands it (``ChatService.recovered``)."""
        return self.id if self.id is not None else self.ms

    @property
    def room_start(self) -> int:
        """The ms a room's replay starts after: the whole of the cursor's millisecond
        for an id (the filter below decides), strictly after a time."""
        return self.ms - 1 if self.id is not None else self.ms

    @property
    def dm_start(self) -> int:
        """The same for the DM inbox, whose pager includes its starting ms."""
        return self.ms if self.id is not None else self.ms + 1

    def covers(self, key: Key, own_source: bool) -> bool:
        """Whether a client at this cursor already has the message at ``key``.

        ``own_source``: the message is in the source (room) the cursor's id belongs
        to, whose earlier messages of the same millisecond the client has by order.
        """
        ts, message_id = key
        if ts != self.ms or self.id is None:
            return ts <= self.ms
        return message_id == self.id or message_id in self.listed or (own_source and message_id < self.id)


def parse_cursor(raw: str, name: str) -> Cursor:
    """A cursor from a header or parameter; 400 naming ``name`` otherwise."""
    if not _CURSOR.match(raw):
        raise BadRequest(
            f"{name} must be a message id (optionally followed by ',' and more ids of the same "
            f"millisecond, at most {MAX_CURSOR_IDS} in all) or unix milliseconds")
    if raw.isdigit():
        return Cursor(int(raw))
    first, *rest = raw.upper().split(",")
    return Cursor(ulid_ms(first), first, frozenset(rest))


class Stamp:
    """A stream's cursor as it sends events: the newest key sent, and the other ids
    of its millisecond already sent (what a resume must not repeat)."""

    __slots__ = ("high", "listed")

    def __init__(self) -> None:
        self.high: Key | None = None
        self.listed: list[str] = []

    def next(self, key: Key) -> str | None:
        """The ``id:`` for the event at ``key``, about to be sent; None for no ``id:``
        line (the event arrived later than a newer one of an earlier millisecond, or
        the millisecond holds more than MAX_CURSOR_IDS of this stream's messages):
        the client's cursor then stays where it was, which already covers it."""
        high = self.high
        if high is None or key > high:
            if high is not None and key[0] == high[0]:
                self.listed.append(high[1])
            else:
                self.listed = []
            self.high = key
        elif key[0] == high[0]:
            self.listed.append(key[1])
        else:
            return None
        if len(self.listed) >= MAX_CURSOR_IDS:
            return None
        assert self.high is not None
        return ",".join([self.high[1], *self.listed]) if self.listed else self.high[1]


# Encoding


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def block(kind: str, payload: bytes, event_id: str | None) -> bytes:
    """One event, chunked. ``payload`` is one line of JSON (orjson escapes newlines)."""
    head = b"id: %b\n" % event_id.encode() if event_id is not None else b""
    return chunk(b"%bevent: %b\ndata: %b\n\n" % (head, kind.encode(), payload))


def encoded(event: Event) -> bytes:
    """``event`` with its own id as the ``id:`` (none for a deletion), built once per
    instance and cached on the event."""
    cached = event.sse
    if cached is None:
        cached = block(event.kind, event.payload, event.id if event.key is not None else None)
        object.__setattr__(event, "sse", cached)
    return cached


def stamped(event: Event, token: str | None) -> bytes:
    """``event`` with ``token`` as its ``id:`` (None: no ``id:`` line)."""
    if token == event.id or event.key is None:
        return encoded(event)
    return block(event.kind, event.payload, token)


def comment(text: str) -> bytes:
    return chunk(b": %b\n\n" % text.encode())

