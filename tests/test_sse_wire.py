"""The SSE cursor and encoding, pure: values in, values out."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aicq.edge import sse_wire
from aicq.edge.sse_stream import resumed
from aicq.edge.sse_wire import MAX_CURSOR_IDS, Cursor, Stamp, parse_cursor
from aicq.errors import BadRequest
from aicq.fanout import Event
from aicq.models import Message

A, B, C, D = (f"01J5Y8Q3M0{c * 16}" for c in "ABCD")  # four ids of one millisecond, in order
MS = 1724371406464  # the millisecond of 01J5Y8Q3M0...
NEXT = "01J5Y8Q3M1" + "0" * 16  # an id of the next millisecond


def test_ids_share_the_millisecond_the_tests_assume() -> None:
    assert {parse_cursor(x, "c").ms for x in (A, B, C, D)} == {MS}
    assert parse_cursor(NEXT, "c").ms == MS + 1


@pytest.mark.parametrize(("raw", "expected"), [
    ("1700000000000", Cursor(1700000000000)),
    ("0", Cursor(0)),
    (A.lower(), Cursor(MS, A)),
    (f"{B},{A}", Cursor(MS, B, frozenset({A}))),
])
def test_cursor_forms(raw: str, expected: Cursor) -> None:
    assert parse_cursor(raw, "since") == expected


@pytest.mark.parametrize("raw", [
    "", " 1", "-1", "1.5", "1" * 16, "8" + A[1:], A[:-1], A + "I", f"{A},", f"{A},,{B}", f"{A};{B}",
    ",".join([A] * (MAX_CURSOR_IDS + 1)),
])
def test_anything_else_is_refused_naming_the_parameter(raw: str) -> None:
    with pytest.raises(BadRequest, match="^Last-Event-ID must be"):
        parse_cursor(raw, "Last-Event-ID")


@given(st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZabz,IL -", max_size=60))
def test_the_documented_pattern_is_exactly_what_is_accepted(raw: str) -> None:
    documented = re.fullmatch(sse_wire.CURSOR_PATTERN.strip("^$"), raw) is not None
    try:
        parse_cursor(raw, "since")
        accepted = True
    except BadRequest:
        accepted = False
    assert accepted == documented


def test_what_a_cursor_covers() -> None:
    cursor = Cursor(MS, C, frozenset({A}))
    assert cursor.covers((MS - 1, NEXT), own_source=False)  # an earlier millisecond
    assert not cursor.covers((MS + 1, NEXT), own_source=False)  # a later one
    assert cursor.covers((MS, C), own_source=False) and cursor.covers((MS, A), own_source=False)
    assert not cursor.covers((MS, B), own_source=False)  # same ms, another room, not listed: news
    assert cursor.covers((MS, B), own_source=True)  # in the cursor's own room, B came before C
    assert not cursor.covers((MS, D), own_source=True)
    by_time = Cursor(MS)
    assert by_time.covers((MS, D), False) and not by_time.covers((MS + 1, A), False)
    assert (cursor.room_start, cursor.dm_start, by_time.room_start, by_time.dm_start) == (MS - 1, MS, MS, MS + 1)


def test_a_stamp_lists_the_other_ids_of_its_millisecond() -> None:
    stamp = Stamp()
    assert stamp.next((MS, B)) == B
    assert stamp.next((MS, D)) == f"{D},{B}"
    assert stamp.next((MS, C)) == f"{D},{B},{C}"  # late, same millisecond: listed
    assert stamp.next((MS + 1, NEXT)) == NEXT  # a new millisecond starts afresh
    assert stamp.next((MS, A)) is None  # late by a millisecond: no id, the cursor stays


def test_a_stamp_gives_up_past_the_cursor_limit() -> None:
    stamp = Stamp()
    ids = [f"01J5Y8Q3M0{n:016d}" for n in range(MAX_CURSOR_IDS + 1)]
    tokens = [stamp.next((MS, i)) for i in ids]
    assert tokens[MAX_CURSOR_IDS - 1] is not None and tokens[MAX_CURSOR_IDS - 1].count(",") == MAX_CURSOR_IDS - 1
    assert tokens[MAX_CURSOR_IDS] is None


def _event(message_id: str, ts: int = MS, room: str = "r") -> Event:
    payload = orjson.dumps({"type": "message", "room": room, "msg": {"id": message_id, "ts": ts}})
    return Event.of(payload, "message", room, message_id, ts)


def test_encoding_is_one_chunk_per_event_built_once() -> None:
    event = _event(A)
    body = b"id: %b\nevent: message\ndata: %b\n\n" % (A.encode(), event.payload)
    assert sse_wire.encoded(event) == b"%x\r\n%b\r\n" % (len(body), body)
    assert sse_wire.encoded(event) is sse_wire.encoded(event)
    assert sse_wire.stamped(event, A) is sse_wire.encoded(event)
    assert b"id: " + f"{A},{B}".encode() in sse_wire.stamped(event, f"{A},{B}")
    assert b"id:" not in sse_wire.stamped(event, None)
    deleted = Event.of(b'{"type":"deleted","room":"r","id":"x"}', "deleted", "r", A, None)
    assert b"id:" not in sse_wire.encoded(deleted) and b"event: deleted" in sse_wire.encoded(deleted)


def _message(message_id: str, ts: int = MS) -> Message:
    return Message(message_id, "r", "someone", "hi", ts)


async def _pages(*pages: list[Message]):
    for page in pages:
        yield page


async def _collect(pages) -> list[str]:
    return [m.id for page in [p async for p in pages] for m in page]


async def test_resumed_pages_in_the_cursors_own_room() -> None:
    cursor = Cursor(MS, C, frozenset())
    # The cursor's millisecond runs across a page boundary: held until it ends.
    pages = _pages([_message(A), _message(B)], [_message(C), _message(D)], [_message(NEXT, MS + 1)])
    assert await _collect(resumed(pages, cursor)) == [D, NEXT]


async def test_resumed_pages_in_another_room() -> None:
    cursor = Cursor(MS, C, frozenset({B}))
    pages = _pages([_message(A), _message(B), _message(D)])
    assert await _collect(resumed(pages, cursor)) == [A, D]
    by_time = Cursor(MS)
    assert await _collect(resumed(_pages([_message(NEXT, MS + 1)]), by_time)) == [NEXT]
