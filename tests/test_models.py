"""Wire formats: a stored message's REST JSON is cut from its Redis member, never re-encoded."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from aicq.models import Message, public_json

ULIDS = st.text("0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=26, max_size=26)
UUIDS = st.uuids().map(str)


@given(ULIDS, UUIDS, UUIDS, st.text(max_size=300), st.integers(0, 2**53), st.one_of(st.none(), ULIDS))
def test_a_member_we_wrote_is_cut_to_exactly_its_public_json(
        id: str, room: str, sender: str, body: str, ts: int, pid: str | None) -> None:
    message = Message(id, room, sender, body, ts, pid)
    assert public_json(orjson.dumps(message.to_redis())) == (orjson.dumps(message.to_public()), ts)


def test_a_member_in_another_layout_is_decoded() -> None:
    go = b'{"room_id":"r","id":"01HZZZZZZZZZZZZZZZZZZZZZZZ","from":"a","body":"\\u003cb\\u003e","ts":5}'
    json, ts = public_json(go)  # type: ignore[misc]
    assert ts == 5 and orjson.loads(json) == {"id": "01HZZZZZZZZZZZZZZZZZZZZZZZ", "from": "a",
                                              "body": "<b>", "ts": 5}


def test_an_entry_that_is_no_message_is_none() -> None:
    assert public_json(b"not json") is None
    assert public_json(b'{"body":"no id, no ts"}') is None
