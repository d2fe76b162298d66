"""The stream's memory: cursors, dedupe, gaps (pure, no network)."""

from __future__ import annotations

from typing import Any

from aicq.client.models import Deleted, DirectMessage, Gap, Message
from aicq.client.resume import RecentIds, ResumeState

ROOM_ID = "11111111-1111-4111-8111-111111111111"


def _msg(msg_id: str, ts: int, room: str = ROOM_ID) -> dict[str, Any]:
    return {
        "type": "message",
        "room": room,
        "msg": {"id": msg_id, "from": "a", "body": "b", "ts": ts},
    }


def _ok(name: str = "lobby", recovered: bool = True) -> dict[str, Any]:
    return {
        "type": "ok",
        "ref": "1",
        "room": {"id": ROOM_ID, "name": name},
        "replayed": 0,
        "recovered": recovered,
    }


def test_first_subscribe_has_no_since_and_later_ones_resume_by_id() -> None:
    state = ResumeState(["lobby"], keys={"lobby": "k" * 16})
    assert state.subscribe_op("lobby", "1") == {
        "op": "subscribe",
        "room": "lobby",
        "ref": "1",
        "key": "k" * 16,
    }
    assert state.subscribed("lobby", _ok(), resumed=False) is None
    assert state.room_names[ROOM_ID] == "lobby"
    assert isinstance(state.accept(_msg("01A", 10)), Message)
    assert isinstance(state.accept(_msg("01B", 11)), Message)
    op = state.subscribe_op("lobby", "2")
    assert op == {"op": "subscribe", "room": ROOM_ID, "ref": "2", "key": "k" * 16, "since": "01B"}


def test_a_message_is_yielded_once_even_when_replayed() -> None:
    state = ResumeState([ROOM_ID])
    first = state.accept(_msg("01A", 10))
    assert isinstance(first, Message) and first.room == ROOM_ID
    assert state.accept(_msg("01A", 10)) is None
    assert state.accept(_msg("01B", 10)) is not None


def test_cursor_is_the_newest_by_ts_then_id() -> None:
    state = ResumeState([ROOM_ID])
    for msg_id, ts in [("01C", 12), ("01A", 12), ("01B", 11)]:
        state.accept(_msg(msg_id, ts))
    assert state.since(ROOM_ID) == "01C"


def test_caller_supplied_since_is_used_until_something_newer_arrives() -> None:
    state = ResumeState(["global"], since={"global": "01X"})
    assert state.subscribe_op("global", "1")["since"] == "01X"


def test_unrecovered_resume_is_a_gap() -> None:
    state = ResumeState(["lobby"])
    assert state.subscribed("lobby", _ok(recovered=False), resumed=True) == Gap(ROOM_ID)
    assert state.subscribed("lobby", _ok(recovered=False), resumed=False) is None


def test_deleted_and_dm_frames() -> None:
    state = ResumeState([ROOM_ID])
    assert state.accept({"type": "deleted", "room": ROOM_ID, "id": "01A"}) == Deleted(
        ROOM_ID, "01A"
    )
    dm = {"id": "01D", "from": "x", "body": "cipher", "ts": 5}
    assert isinstance(state.accept({"type": "dm", "msg": dm}), DirectMessage)
    assert state.accept({"type": "dm", "msg": dm}) is None
    assert state.accept({"type": "pong", "ref": "1"}) is None


def test_dm_catch_up_skips_what_predates_the_stream() -> None:
    state = ResumeState([])
    state.dm_baseline([{"id": "01B", "from": "x", "body": "c", "ts": 20}])
    assert state.accept_dm({"id": "01A", "from": "x", "body": "c", "ts": 10}, live=False) is None
    assert state.accept_dm({"id": "01B", "from": "x", "body": "c", "ts": 20}, live=False) is None
    assert (
        state.accept_dm({"id": "01C", "from": "x", "body": "c", "ts": 30}, live=False) is not None
    )
    assert state.accept_dm({"id": "01C", "from": "x", "body": "c", "ts": 30}, live=True) is None


def test_recent_ids_are_bounded() -> None:
    recent = RecentIds(capacity=3)
    for item in "abcd":
        assert recent.add(item)
    assert len(recent) == 3 and "a" not in recent and "d" in recent
    assert not recent.add("d")


def test_malformed_events_are_skipped() -> None:
    state = ResumeState([ROOM_ID])
    assert state.accept({"type": "message", "room": ROOM_ID, "msg": {"id": "01A"}}) is None
    assert state.accept({"type": "message", "room": ROOM_ID, "msg": "nope"}) is None
    assert state.accept({"type": "dm", "msg": {"id": "01A", "ts": "soon"}}) is None
    assert state.accept({"type": "deleted", "room": ROOM_ID}) is None


def test_a_quiet_room_resumes_from_where_the_subscribe_stood() -> None:
    """Issue 12.5: no message seen yet, so the server's ``cursor`` is the resume point."""
    state = ResumeState(["lobby"])
    state.subscribed("lobby", {**_ok(), "cursor": 1_700_000_000_123}, resumed=False)
    assert state.subscribe_op("lobby", "2")["since"] == "1700000000123"
    state.accept(_msg("01B", 1_700_000_000_200))
    assert state.subscribe_op("lobby", "3")["since"] == "01B"  # a message seen wins


def test_a_server_without_cursor_still_subscribes_live_only() -> None:
    state = ResumeState(["lobby"])
    state.subscribed("lobby", _ok(), resumed=False)
    assert "since" not in state.subscribe_op("lobby", "2")
