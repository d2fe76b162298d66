"""aicq/validation.py, pure: each input rule with its edge values, values in and values out."""

from __future__ import annotations

import base64
import string
import unicodedata
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from aicq import validation as v
from aicq.errors import AICQError, BadRequest, NotFound, Unprocessable

A_UUID = "6f1c2a7e-3d4b-4c8e-9a51-2b7d8e9f0a13"
A_ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
NOT_STRINGS = [None, 7, 1.5, True, [], {}, b"bytes"]


def refused(rule: Any, *args: Any, error: type[AICQError] = BadRequest, match: str = "") -> str:
    """Call ``rule``; it must raise exactly ``error`` (its status) with ``match`` in the message."""
    with pytest.raises(AICQError) as raised:
        rule(*args)
    assert type(raised.value) is error, (type(raised.value), raised.value.message)
    assert match in raised.value.message, raised.value.message
    return raised.value.message


# -- ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    A_UUID, A_UUID.upper(), "{" + A_UUID + "}", "urn:uuid:" + A_UUID, A_UUID.replace("-", ""),
])
def test_parse_uuid_gives_the_canonical_form(value: str) -> None:
    assert v.parse_uuid(value) == A_UUID
    assert v.is_uuid(value)


@pytest.mark.parametrize("value", ["", "global", A_UUID[:-1], A_UUID + "0", A_UUID.replace("a", "g"),
                                   " " * 60 + A_UUID, *NOT_STRINGS])
def test_parse_uuid_refuses_what_is_not_one(value: Any) -> None:
    refused(v.parse_uuid, value, "room", match="invalid room: must be a UUID")
    assert not v.is_uuid(value)


@given(st.uuids())
def test_every_uuid_round_trips(value: uuid.UUID) -> None:
    assert v.parse_uuid(str(value).upper()) == str(value)


@pytest.mark.parametrize("value, valid", [
    (A_ULID, True), (A_ULID.lower(), True), ("0" * 26, True), ("7" + "Z" * 25, True),
    (A_ULID[:-1], False), (A_ULID + "0", False), (A_ULID + "\n", False), (" " + A_ULID, False),
    *((A_ULID[:-1] + letter, False) for letter in "ILOUilou"),  # not in Crockford's alphabet
    ("ſ" * 26, False),  # upper() would make it "S" * 26
    ("", False), (None, False), (26, False),
])
def test_is_ulid(value: Any, valid: bool) -> None:
    assert v.is_ulid(value) is valid


@given(st.integers(0, (1 << 48) - 1), st.binary(min_size=10, max_size=10))
def test_ulid_ms_reads_the_timestamp_python_ulid_wrote(ms: int, randomness: bytes) -> None:
    text = str(ULID.from_bytes(ms.to_bytes(6, "big") + randomness))
    assert v.is_ulid(text)
    assert v.ulid_ms(text) == ms == v.ulid_ms(text.lower())


def test_message_id_is_an_upper_case_ulid_or_not_found() -> None:
    assert v.message_id(A_ULID.lower()) == A_ULID
    for value in ["", "nope", A_ULID + "\n", None]:
        refused(v.message_id, value, error=NotFound, match="message not found")


@pytest.mark.parametrize("value, expected", [(None, None), ("", None), (A_ULID.lower(), A_ULID)])
def test_parent_id(value: Any, expected: str | None) -> None:
    assert v.parent_id(value) == expected


@pytest.mark.parametrize("value", ["x", A_ULID[:-1], A_ULID + "\n", 5, [A_ULID]])
def test_parent_id_refuses_what_cannot_name_a_message(value: Any) -> None:
    refused(v.parent_id, value, error=Unprocessable, match="pid must be the id of a message")


# -- agents ---------------------------------------------------------------------------

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
BASE64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


def test_public_key_is_returned_canonical() -> None:
    assert v.public_key(KEY_B64) == KEY_B64
    # The last character carries 2 unused bits: set, they decode to the same key.
    loose = KEY_B64[:-2] + BASE64[BASE64.index(KEY_B64[-2]) + 1] + "="
    assert base64.b64decode(loose) == KEY and v.public_key(loose) == KEY_B64


@pytest.mark.parametrize("value, match", [
    (None, "public_key is required"), ("", "public_key is required"), (7, "public_key is required"),
    (KEY_B64.rstrip("="), "standard base64"), (" " + KEY_B64, "standard base64"),
    (base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "standard base64"), ("é" * 44, "standard base64"),
    (base64.b64encode(KEY[:31]).decode(), "exactly 32 bytes"), (base64.b64encode(KEY + b"!").decode(), "exactly 32 bytes"),
])
def test_public_key_refusals(value: Any, match: str) -> None:
    refused(v.public_key, value, match=match)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("   ", None), ("\x00\x1b\u200b", None),
    ("  research-bot  ", "research-bot"), ("a\u0000b\tc\u202ed", "abcd"), ("Zoë 🤖", "Zoë 🤖"),
    ("n" * 100, "n" * 100), ("n" * 101, "n" * 100), ("n" * 99 + " x", "n" * 99),
])
def test_agent_name_is_cleaned_and_cut_not_refused(value: Any, expected: str | None) -> None:
    assert v.agent_name(value) == expected


@given(st.text(max_size=300))
def test_agent_name_never_keeps_control_characters_or_runs_long(value: str) -> None:
    name = v.agent_name(value)
    if name is not None:
        assert 0 < len(name) <= v.MAX_NAME_CHARS and name == name.strip()
        assert not any(unicodedata.category(c).startswith("C") for c in name)


def test_agent_name_must_be_text() -> None:
    refused(v.agent_name, 42, match="name must be a string")


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("bot@example.com", "bot@example.com"), ("\u00a0bot@example.com\n", "bot@example.com"),
    ("a.b+c@sub.example.io", "a.b+c@sub.example.io"), ("x@" + "a" * 63 + ".io", "x@" + "a" * 63 + ".io"),
    ("x" * 240 + "@example.com", "x" * 240 + "@example.com"),  # 252 characters
])
def test_email_accepted(value: Any, expected: str | None) -> None:
    assert v.email(value) == expected


@pytest.mark.parametrize("value", [
    " ", "bot", "bot@", "@example.com", "bot@example", "bot@-example.com", "bot@example-.com",
    "bot@" + "a" * 64 + ".io", "bö@example.com", "bot@exämple.com", "two@@example.com",
    "x" * 243 + "@example.com", 7, ["bot@example.com"],
])
def test_email_refused(value: Any) -> None:
    refused(v.email, value, match="invalid email address")


# -- rooms ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("global", "global"), ("  a-b_C9\n", "a-b_C9"), ("r" * 50, "r" * 50), ("x", "x"),
    ("\u212aelvin", "Kelvin"),  # NFC turns the Kelvin sign into K
])
def test_room_name_accepted(value: str, expected: str) -> None:
    assert v.room_name(value) == expected
    assert v.looks_like_room_name(expected)


@pytest.mark.parametrize("value", ["", "   ", "r" * 51, "two words", "dot.ted", "café", "a/b", "\u212b"])
def test_room_name_refused(value: str) -> None:
    refused(v.room_name, value, match="room name must be 1-50 characters")


def test_a_path_segment_with_a_newline_is_no_room_name() -> None:
    assert v.room_name("global\n") == "global"  # a body's name is trimmed first
    assert not v.looks_like_room_name("global\n")  # a path segment is not


def test_room_name_must_be_text() -> None:
    for value in NOT_STRINGS:
        refused(v.room_name, value, match="name is required")
        assert not v.looks_like_room_name(value)


@pytest.mark.parametrize("key", [None, "", "short", 7, "k" * 500])
def test_a_public_room_ignores_any_key(key: Any) -> None:
    assert v.room_key(False, key) is None


@pytest.mark.parametrize("key", ["k" * 16, "k" * 72, "é" * 36, "€" * 24, "😀" * 18, "😀" * 16])
def test_private_room_key_accepted(key: str) -> None:
    assert v.room_key(True, key) == key


@pytest.mark.parametrize("key, match", [
    ("k" * 15, "at least 16 characters"), ("😀" * 15, "at least 16 characters"), (None, "at least 16 characters"),
    (1234567890123456, "at least 16 characters"),
    ("k" * 73, "at most 72 bytes"), ("é" * 37, "at most 72 bytes"), ("😀" * 19, "at most 72 bytes"),
    ("k" * 71 + "é", "at most 72 bytes"),
])
def test_private_room_key_refused(key: Any, match: str) -> None:
    refused(v.room_key, True, key, match=match)


@pytest.mark.parametrize("is_private", [None, 0, 1, "true", "false"])
def test_is_private_must_be_a_boolean(is_private: Any) -> None:
    refused(v.room_key, is_private, "k" * 16, match="is_private must be a boolean")


# -- message bodies -------------------------------------------------------------------


@pytest.mark.parametrize("body", ["x", "a" * 4096, "é" * 2048, "€" * 1365 + "a", "😀" * 1024, "\n"])
def test_message_body_accepted_up_to_4096_bytes(body: str) -> None:
    assert v.message_body(body) == body


@pytest.mark.parametrize("body", ["a" * 4097, "é" * 2049, "😀" * 1024 + "a"])
def test_message_body_over_4096_bytes_is_unprocessable(body: str) -> None:
    refused(v.message_body, body, error=Unprocessable, match="body exceeds 4096 bytes")


@pytest.mark.parametrize("body, match", [
    ("", "body is required"), (None, "body is required"), (5, "body is required"),
    ("a\ud800b", "valid UTF-8"),  # a lone surrogate, as a "\ud800" JSON escape gives
])
def test_message_body_refused(body: Any, match: str) -> None:
    refused(v.message_body, body, match=match)


def test_dm_body_accepts_base64_of_60_bytes_or_more() -> None:
    for size in (60, 61, 62, 6144):
        body = base64.b64encode(bytes(size)).decode()
        assert v.dm_body(body) == body
    assert len(base64.b64encode(bytes(6144))) == v.MAX_DM_CHARS


@pytest.mark.parametrize("body, error, match", [
    ("", BadRequest, "body is required"), (None, BadRequest, "body is required"),
    (base64.b64encode(bytes(59)).decode(), Unprocessable, "at least 60 bytes"),
    (base64.b64encode(bytes(61)).decode().rstrip("="), Unprocessable, "at least 60 bytes"),  # padding dropped
    (base64.urlsafe_b64encode(b"\xfb" * 60).decode(), Unprocessable, "at least 60 bytes"),
    (base64.b64encode(bytes(60)).decode() + "\n", Unprocessable, "at least 60 bytes"),
    ("not base64 at all, but long enough to pass any length check of sixty bytes....", Unprocessable, "AICQ DM"),
    (base64.b64encode(bytes(6145)).decode(), Unprocessable, "exceeds 8192 characters"),
])
def test_dm_body_refused(body: Any, error: type[AICQError], match: str) -> None:
    refused(v.dm_body, body, error=error, match=match)


# -- query parameters -----------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    (None, None), ("", None), (0, 0), ("0", 0), ((1 << 53) - 1, (1 << 53) - 1), (str((1 << 53) - 1), (1 << 53) - 1),
    ("0" * 20, 0), (A_ULID.lower(), A_ULID),
])
def test_cursor_accepted(raw: Any, expected: Any) -> None:
    assert v.cursor(raw, "before") == expected


@pytest.mark.parametrize("raw, match", [
    (-1, "out of range"), (1 << 53, "out of range"), ("-1", "out of range"), (str(1 << 53), "out of range"),
    ("0" * 21, "unix milliseconds or a message id"), (True, "unix milliseconds or a message id"),
    (1.5, "unix milliseconds or a message id"), ("yesterday", "unix milliseconds or a message id"),
    (A_ULID + "\n", "unix milliseconds or a message id"), ([1], "unix milliseconds or a message id"),
])
def test_cursor_refused(raw: Any, match: str) -> None:
    refused(v.cursor, raw, "since", match=f"since {'is' if 'range' in match else 'must be'} {match}")


# -- search ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, tokens", [
    ("Hello, World!", ["hello", "world"]), ("the cat and THE hat", ["cat", "hat"]),
    ("a b c 1 x2 42", ["x2", "42"]), ("café über", ["caf", "ber"]), ("dup dup Dup", ["dup"]), ("", []),
])
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert v.tokenize(text) == tokens


@given(st.text(max_size=200))
def test_tokens_are_lowercase_words_once_each(text: str) -> None:
    tokens = v.tokenize(text)
    assert len(tokens) == len(set(tokens))
    for token in tokens:
        assert len(token) >= 2 and set(token) <= set(string.ascii_lowercase + string.digits)
        assert token not in v.STOP_WORDS
    assert v.tokenize(" ".join(tokens)) == tokens  # what a query asks for is what was indexed


def test_query_tokens_keeps_the_first_five() -> None:
    assert v.query_tokens("one two three four five six seven") == ["one", "two", "three", "four", "five"]
    assert v.query_tokens("q" * 100) == ["q" * 100]
    assert v.query_tokens("the a") == []


@pytest.mark.parametrize("q", [None, "", "q" * 101, 5])
def test_query_must_be_1_to_100_characters(q: Any) -> None:
    refused(v.query_tokens, q, match="q is required (1-100 characters)")
