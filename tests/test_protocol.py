"""WebSocket frames, pure: parse client ops, encode server frames (SPEC §6)."""

from __future__ import annotations

import orjson
import pytest

from aicq import protocol
from aicq.fanout import parse_publication
from aicq.history import publication
from aicq.models import DirectMessage, Message
from aicq.protocol import text_frame


def test_parse_op_with_ref_and_args() -> None:
    request = protocol.parse('{"op": "subscribe", "room": "global", "since": 5, "ref": "r1"}')
    assert request == protocol.Request("r1", protocol.Subscribe("global", None, 5))


@pytest.mark.parametrize("frame, op", [
    ('{"op": "ping"}', protocol.Ping()),
    ('{"op": "subscribe", "room": "r", "key": "k", "since": "01arz3ndektsv4rrffq69g5fav"}',
     protocol.Subscribe("r", "k", "01ARZ3NDEKTSV4RRFFQ69G5FAV")),
    ('{"op": "subscribe", "room": "r", "since": "1700000000000"}', protocol.Subscribe("r", None, 1700000000000)),
    ('{"op": "unsubscribe", "room": "r"}', protocol.Unsubscribe("r")),
    ('{"op": "post", "room": "r", "body": 5}', protocol.Post("r", 5)),
    ('{"op": "post", "room": "r", "body": "b", "pid": "p", "key": "k"}', protocol.Post("r", "b", "p", "k")),
    ('{"op": "dm", "to": "a", "body": "b"}', protocol.SendDM("a", "b")),
    ('{"op": "delete", "room": "r", "id": "i"}', protocol.Delete("r", "i")),
])
def test_each_op_parses_into_its_type(frame: str, op: protocol.Op) -> None:
    assert protocol.parse(frame).op == op


@pytest.mark.parametrize("frame, message", [
    ('{"op": "subscribe", "ref": 1}', "room must be a non-empty string"),
    ('{"op": "subscribe", "room": "r", "key": 5, "ref": 1}', "key must be a non-empty string"),
    ('{"op": "subscribe", "room": "r", "since": true, "ref": 1}', "since must be unix milliseconds or a message id"),
    ('{"op": "post", "room": "", "ref": 1}', "room must be a non-empty string"),
    ('{"op": "dm", "body": "x", "ref": 1}', "to must be a non-empty string"),
    ('{"op": "delete", "room": "r", "ref": 1}', "id must be a non-empty string"),
])
def test_wrong_arguments_are_400_with_the_ref(frame: str, message: str) -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse(frame)
    assert (caught.value.status, caught.value.message, caught.value.ref) == (400, message, 1)


def test_malformed_auth_is_401() -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse('{"op": "auth", "agent": "nope", "nonce": "n", "ts": 1, "sig": "s", "ref": "a"}')
    assert (caught.value.status, caught.value.ref) == (401, "a")
    creds = protocol.parse(
        '{"op": "auth", "agent": "00000000-0000-0000-0000-000000000001", "nonce": "%s", "ts": 17, "sig": "s"}'
        % ("n" * 24)).op.credentials
    assert creds.timestamp == "17"


def test_close_codes_say_whether_to_reconnect() -> None:
    assert protocol.should_reconnect(1012) and protocol.should_reconnect(1013)
    assert not protocol.should_reconnect(1008) and not protocol.should_reconnect(1009)
    assert protocol.should_reconnect(1006)  # abnormal closure: not ours, try again


@pytest.mark.parametrize("frame, ref", [
    ("not json", None), ("[1, 2]", None), ('{"op": "fly", "ref": 7}', 7), ('{"ref": "x"}', "x"),
    ('{"op": 3}', None), ('"op"', None), ("", None),
])
def test_bad_frames_raise_with_the_ref_when_readable(frame: str, ref: object) -> None:
    with pytest.raises(protocol.FrameError) as caught:
        protocol.parse(frame)
    assert caught.value.status == 400 and caught.value.ref == ref


@pytest.mark.parametrize("ref", [{"a": 1}, [1], "x" * 65, 2**60, True])
def test_unusable_refs_are_refused(ref: object) -> None:
    with pytest.raises(protocol.FrameError):
        protocol.parse(orjson.dumps({"op": "ping", "ref": ref}))


def test_server_frames() -> None:
    assert orjson.loads(protocol.error("r", 429, "rate limit exceeded")) == {
        "type": "error", "ref": "r", "code": 429, "error": "rate limit exceeded"}
    assert orjson.loads(protocol.error("r", 429, "rate limit exceeded", 12))["retry_after"] == 12
    assert orjson.loads(protocol.pong(None, 12)) == {"type": "pong", "ref": None, "server_time": 12}
    hello = orjson.loads(protocol.hello("s", None, 20.0, "i"))
    assert hello == {"type": "hello", "version": 1, "session": "s", "agent": None, "heartbeat": 20.0, "instance": "i"}


def test_message_event_omits_empty_pid_and_keeps_field_order() -> None:
    message = Message("01ARZ3NDEKTSV4RRFFQ69G5FAV", "room", "agent", "hi", 1, None)
    event = orjson.loads(protocol.message_event(message))
    assert event == {"type": "message", "room": "room", "msg": {"id": message.id, "from": "agent", "body": "hi", "ts": 1}}
    assert list(message.to_redis()) == ["id", "room_id", "from", "body", "ts"]
    reply = Message("01ARZ3NDEKTSV4RRFFQ69G5FAW", "room", "agent", "re", 2, message.id)
    assert list(reply.to_redis()) == ["id", "room_id", "from", "body", "pid", "ts"]


def test_publication_round_trip_builds_the_frame_once() -> None:
    dm = DirectMessage("01ARZ3NDEKTSV4RRFFQ69G5FAV", "a", "b", "c2VjcmV0", 9)
    payload = protocol.dm_event(dm)
    published, event = parse_publication(publication(payload))
    assert published > 0 and event.kind == "dm" and event.id == dm.id and event.ts == 9
    assert event.frame == text_frame(payload)
    assert parse_publication(b"1.0|{broken") is None


def test_text_frame_lengths() -> None:
    assert text_frame(b"x")[:2] == b"\x81\x01"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:2] == b"\x81\x7f"


@pytest.mark.parametrize("body", ["plain", "\x00id\x00 and \x00ts\x00", '"\\u0000ts\\u0000"', "}}", "é😀"])
def test_spliced_encodings_fill_to_the_real_ones(body: str) -> None:
    from aicq.models import spliced

    draft = Message.draft("room", "agent", body, "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    real = Message("01ARZ3NDEKTSV4RRFFQ69G5FAW", "room", "agent", body, 1795981895368, draft.pid)
    for encode, expected in [(lambda m: m.to_redis(), real.to_redis()),
                             (protocol.message_event_data, protocol.message_event_data(real))]:
        head, middle, tail = spliced(encode(draft))
        filled = head + real.id.encode() + middle + str(real.ts).encode() + tail
        assert filled == orjson.dumps(expected)
