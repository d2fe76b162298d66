"""The OpenAPI document states the limits the server enforces: values in, two verdicts out.

Each request field the document describes is checked against the rule the server
applies to it (the function of aicq/validation.py that service.py calls): whatever the
document admits, the server accepts; and wherever JSON Schema can state the rule
exactly, whatever the server accepts, the document admits. Where it cannot (a limit in
UTF-8 bytes), the document admits what surely fits and the test says which region.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from aicq import validation
from aicq.errors import AICQError

DOCUMENT = Path(validation.__file__).parent / "docs" / "openapi.yaml"
ULID_PATTERN = "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"

# -- the document, read as JSON Schema means it -------------------------------------


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """An ECMA-262 pattern (JSON Schema's dialect) as Python's re.

    The difference that matters here: ECMA's ``$`` is the end of the input, Python's
    also matches before a final newline.
    """
    out, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@cache
def _validator(name: str) -> Any:
    components = yaml.safe_load(DOCUMENT.read_text())["components"]
    return Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def admits(schema: str, instance: dict[str, Any]) -> bool:
    return _validator(schema).is_valid(instance)


def accepts(rule: Callable[..., Any], *args: Any) -> bool:
    try:
        rule(*args)
    except AICQError:
        return False
    return True


def agree(document: bool, server: bool, value: Any, *, exact: bool = True) -> None:
    assert server or not document, f"the document admits {value!r}, the server refuses it"
    if exact:
        assert document or not server, f"the server accepts {value!r}, the document refuses it"


# -- values near each limit -----------------------------------------------------------

NOT_STRINGS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2))
# One character of each UTF-8 width, and white space of several kinds.
WIDTHS = ["a", "é", "€", "😀"]
SPACES = [" ", "\t", "\n", "\x0b", "\xa0", "\u2003", "\u3000"]


def repeated(units: list[str], low: int, high: int) -> st.SearchStrategy[str]:
    """Long strings cheaply: a run of one unit, a few others mixed in, around [low, high]."""
    return st.builds(
        lambda unit, count, extra: unit * count + extra,
        st.sampled_from(units), st.integers(low, high), st.text(st.sampled_from(units), max_size=4),
    )


def utf8_width(text: str) -> int:
    return max((len(c.encode()) for c in text), default=1)


# -- agents ---------------------------------------------------------------------------


@given(st.one_of(
    st.binary(min_size=30, max_size=34).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(raw).decode().rstrip("=")),
    st.binary(min_size=32, max_size=32).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.binary(min_size=32, max_size=32).map(lambda raw: " " + base64.b64encode(raw).decode()),
    st.text(max_size=50), NOT_STRINGS,
))
def test_public_key(value: Any) -> None:
    agree(admits("RegisterRequest", {"public_key": value}), accepts(validation.public_key, value), value)


@given(st.one_of(st.text(max_size=120), NOT_STRINGS))
def test_agent_name(value: Any) -> None:
    document = admits("RegisterRequest", {"public_key": "A" * 43 + "=", "name": value})
    agree(document, accepts(validation.agent_name, value), value)


EMAIL_LOCAL = st.text(st.sampled_from(string.ascii_letters + string.digits + ".!#$%&'*+/=?^_`{|}~-é@ "), min_size=0, max_size=70)
EMAIL_LABEL = st.text(st.sampled_from(string.ascii_lowercase + string.digits + "-_é"), min_size=0, max_size=64)


@given(st.one_of(
    st.builds(lambda before, local, labels, after: f"{before}{local}@{'.'.join(labels)}{after}",
              st.text(st.sampled_from(SPACES), max_size=2), EMAIL_LOCAL,
              st.lists(EMAIL_LABEL, min_size=1, max_size=4), st.text(st.sampled_from(SPACES), max_size=2)),
    st.builds(lambda local: f"{local}@example.com", repeated(["a"], 230, 260)),
    st.sampled_from(["", " ", "\n"]), st.text(max_size=20), NOT_STRINGS,
))
@example("a@b.co\n")
def test_email(value: Any) -> None:
    document = admits("RegisterRequest", {"public_key": "A" * 43 + "=", "email": value})
    agree(document, accepts(validation.email, value), value)


# -- rooms ----------------------------------------------------------------------------

ROOM_NAME_CHARS = st.sampled_from([*"aZ09_-", *SPACES, "é", ".", "/", "\u212a", "\u0301"])


@given(st.one_of(st.text(ROOM_NAME_CHARS, max_size=56), repeated(["a", "Z"], 45, 55), NOT_STRINGS))
@example("global\n")
@example("\u212aelvin")
def test_room_name(value: Any) -> None:
    agree(admits("CreateRoomRequest", {"name": value}), accepts(validation.room_name, value), value)


@given(st.one_of(st.text(st.sampled_from(WIDTHS), max_size=80), repeated(WIDTHS, 10, 80), NOT_STRINGS))
@example("k" * 72)
@example("é" * 36)
@example("é" * 37)
@example("€" * 24)
@example("😀" * 18)
@example("a" * 60 + "é")
def test_private_room_key(key: Any) -> None:
    document = admits("CreateRoomRequest", {"name": "r", "is_private": True, "key": key})
    server = accepts(validation.room_key, True, key)
    # Exact where a schema can count bytes: one-byte characters, or few enough characters.
    width = utf8_width(key) if isinstance(key, str) else 1
    surely_fits = not isinstance(key, str) or len(key) <= {1: 72, 2: 36, 3: 24, 4: 18}[width]
    agree(document, server, key, exact=surely_fits)


@given(st.one_of(st.just(False), st.none(), st.integers(0, 1), st.just("true")), st.one_of(st.text(max_size=80), NOT_STRINGS))
def test_a_public_room_ignores_the_key(is_private: Any, key: Any) -> None:
    document = admits("CreateRoomRequest", {"name": "r", "is_private": is_private, "key": key})
    agree(document, accepts(validation.room_key, is_private, key), (is_private, key))


# -- messages -------------------------------------------------------------------------


@given(st.one_of(
    st.text(max_size=50), repeated(WIDTHS, 1000, 4100), st.sampled_from(["", "\n"]), NOT_STRINGS,
))
@example("a" * 4096)
@example("a" * 4097)
@example("é" * 2048)
@example("é" * 2049)
@example("😀" * 1024)
@example("😀" * 1025)
def test_message_body(body: Any) -> None:
    document = admits("PostMessageRequest", {"body": body})
    server = accepts(validation.message_body, body)
    width = utf8_width(body) if isinstance(body, str) else 1
    surely_fits = not isinstance(body, str) or len(body) <= {1: 4096, 2: 2048, 3: 1365, 4: 1024}[width]
    agree(document, server, body if not isinstance(body, str) else body[:40] + f"... ({len(body)})",
          exact=surely_fits)


@given(st.one_of(
    st.from_regex(f"^{ULID_PATTERN}$", fullmatch=True),
    st.from_regex(f"^{ULID_PATTERN}$", fullmatch=True).map(lambda ulid: ulid + "\n"),
    st.from_regex(f"^{ULID_PATTERN}$", fullmatch=True).map(lambda ulid: ulid[:25] + "ſ"),
    st.text(st.sampled_from("0123456789ABIJLOUZabiloz"), min_size=24, max_size=28),
    st.sampled_from(["", "\n"]), st.none(), st.integers(),
))
def test_parent_id(pid: Any) -> None:
    agree(admits("PostMessageRequest", {"body": "hi", "pid": pid}), accepts(validation.parent_id, pid), pid)


@given(st.one_of(
    st.binary(min_size=56, max_size=64).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(min_size=56, max_size=64).map(lambda raw: base64.b64encode(raw).decode().rstrip("=")),
    st.binary(min_size=56, max_size=64).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.binary(min_size=60, max_size=64).map(lambda raw: base64.b64encode(raw).decode() + "\n"),
    st.integers(6140, 6150).map(lambda n: base64.b64encode(b"\xfb" * n).decode()),
    st.text(max_size=90), NOT_STRINGS,
))
def test_dm_body(body: Any) -> None:
    document = admits("DirectMessageRequest", {"body": body})
    agree(document, accepts(validation.dm_body, body), body if not isinstance(body, str) else body[:40])
