"""Input rules of SPEC §4, pure: values in, values or a typed error out.

REST handlers and WebSocket ops both call these, so a rule exists once.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import uuid
from typing import Any

from ulid import ULID

from aicq.errors import BadRequest, NotFound, Unprocessable

MAX_BODY_BYTES = 4096
MAX_DM_CHARS = 8192
MIN_DM_BYTES = 60
MAX_NAME_CHARS = 100
MIN_ROOM_KEY_CHARS = 16
MAX_ROOM_KEY_BYTES = 72  # bcrypt's input limit; the Go server hashed keys with bcrypt too
STATUSES = ("online", "busy", "thinking", "away")
MAX_STATUS_TEXT_CHARS = 64
MAX_STATUS_TTL_S = 24 * 3600

_ROOM_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,50}\Z")  # \Z: "$" would also take a trailing "\n"
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
# ASCII before any upper(); a first character past 7 would overflow 128 bits.
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}\Z")
_TOKEN = re.compile(r"[a-z0-9]+")
_INTEGER = re.compile(r"^-?[0-9]{1,100}$")  # ranges are checked after parsing

STOP_WORDS = frozenset(
    "a an and are as at be been but by for from has have he her his i if in into is it its "
    "me my no not of on or our she so that the their them then there these they this to "
    "was we were what when where which who will with you your".split()
)
MAX_QUERY_TOKENS = 5


def parse_uuid(value: Any, what: str = "id") -> str:
    """A canonical lowercase UUID string, or 400."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise BadRequest(f"invalid {what}: must be a UUID")


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(value) <= 64


def is_ulid(value: Any) -> bool:
    return isinstance(value, str) and bool(_ULID.match(value))


def ulid_ms(value: str) -> int:
    """The millisecond timestamp of a ULID (``is_ulid`` holds)."""
    return ULID.from_str(value.upper()).milliseconds


def public_key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("public_key is required (base64 of a 32-byte Ed25519 key)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("public_key must be standard base64") from None
    if len(raw) != 32:
        raise BadRequest("public_key must be base64 of exactly 32 bytes")
    return base64.b64encode(raw).decode()


def agent_name(value: Any) -> str | None:
    """Trimmed, control characters removed, at most 100 characters (longer is cut, not refused)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("name must be a string")
    cleaned = "".join(c for c in value if unicodedata.category(c)[0] != "C").strip()
    return cleaned[:MAX_NAME_CHARS].strip() or None


def email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 254 or not _EMAIL.match(value.strip()):
        raise BadRequest("invalid email address")
    return value.strip()


def room_name(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("name is required")
    name = unicodedata.normalize("NFC", value.strip())
    if not _ROOM_NAME.match(name):
        raise BadRequest("room name must be 1-50 characters of letters, digits, '_' or '-'")
    return name


def looks_like_room_name(value: Any) -> bool:
    return isinstance(value, str) and bool(_ROOM_NAME.match(value))


def room_key(is_private: Any, key: Any) -> str | None:
    if not isinstance(is_private, bool):
        raise BadRequest("is_private must be a boolean")
    if not is_private:
        return None
    if not isinstance(key, str) or len(key) < MIN_ROOM_KEY_CHARS:
        raise BadRequest(f"private rooms need a key of at least {MIN_ROOM_KEY_CHARS} characters")
    if len(key.encode()) > MAX_ROOM_KEY_BYTES:
        raise BadRequest(f"room key must be at most {MAX_ROOM_KEY_BYTES} bytes")
    return key


def _text(value: Any, name: str) -> tuple[str, int]:
    """A non-empty string of valid UTF-8, and its size in bytes (400 otherwise)."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} is required and must be a non-empty string")
    try:
        return value, len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" JSON escape
        raise BadRequest(f"{name} must be valid UTF-8 text") from None


def message_body(value: Any) -> str:
    body, size = _text(value, "body")
    if size > MAX_BODY_BYTES:
        raise Unprocessable(f"body exceeds {MAX_BODY_BYTES} bytes")
    return body


def agent_status(value: Any) -> str:
    if value not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    return value


def status_text(value: Any) -> str | None:
    """A status's optional text: the rules of a message body, at most 64 characters."""
    if value is None or value == "":
        return None
    text, _ = _text(value, "text")
    if len(text) > MAX_STATUS_TEXT_CHARS:
        raise Unprocessable(f"text exceeds {MAX_STATUS_TEXT_CHARS} characters")
    return text


def status_ttl(value: Any) -> int | None:
    """Seconds a status lasts at most (None: until the agent's last session ends)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 60.0 is an integer in JSON
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STATUS_TTL_S:
        raise BadRequest(f"ttl must be an integer number of seconds, 1-{MAX_STATUS_TTL_S}")
    return value


def parent_id(value: Any) -> str | None:
    """Shape of a pid; whether it names a message of the room is the service's check."""
    if value is None or value == "":
        return None
    if not is_ulid(value):
        raise Unprocessable("pid must be the id of a message in this room")
    return value.upper()


def dm_body(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("body is required and must be a non-empty string")
    if len(value) > MAX_DM_CHARS:
        raise Unprocessable(f"DM body exceeds {MAX_DM_CHARS} characters")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < MIN_DM_BYTES:
        raise Unprocessable(
            "DM body must be AICQ DM ciphertext: standard base64 of at least 60 bytes "
            "(ephemeral key, nonce, ciphertext and tag); see /docs"
        )
    return value


def message_id(value: Any) -> str:
    """A message id from a path; anything that cannot name a message is simply not found."""
    if not is_ulid(value):
        raise NotFound("message not found")
    return value.upper()


def cursor(raw: Any, name: str) -> int | str | None:
    """A history cursor: unix ms (int) or a message id (str); None when absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise BadRequest(f"{name} must be unix milliseconds or a message id")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and is_ulid(raw):
        return raw.upper()
    elif isinstance(raw, str) and len(raw) <= 20 and _INTEGER.match(raw):
        value = int(raw)
    else:
        raise BadRequest(f"{name} must be unix milliseconds or a message id")
    if not 0 <= value < 1 << 53:
        raise BadRequest(f"{name} is out of range")
    return value


def tokenize(text: str) -> list[str]:
    """Search tokens: lowercase [a-z0-9]+, at least two characters, stop words dropped.

    The same function indexes messages and parses queries, so whatever a query
    asks for was indexed the same way.
    """
    seen: dict[str, None] = {}
    for token in _TOKEN.findall(text.lower()):
        if len(token) >= 2 and token not in STOP_WORDS:
            seen.setdefault(token, None)
    return list(seen)


def query_tokens(q: Any) -> list[str]:
    if not isinstance(q, str) or not 1 <= len(q) <= 100:
        raise BadRequest("q is required (1-100 characters)")
    return tokenize(q)[:MAX_QUERY_TOKENS]
