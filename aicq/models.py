"""The service's values. Wire formats live next to them so REST, WS and Redis agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# A message's id and ts are assigned inside Redis, by the script that stores and
# publishes it (so publish order is (ts, id) order). Its encodings are made here,
# once, around two slots; the script splices the id and the ts in.
ID_SLOT = "\x00id\x00"
TS_SLOT = "\x00ts\x00"
_ID_JSON = orjson.dumps(ID_SLOT)[1:-1]
_TS_JSON = orjson.dumps(TS_SLOT)


def spliced(data: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The JSON of ``data`` cut around its id slot and ts slot: (head, middle, tail).

    ``head + id + middle + ts + tail`` is the encoding with the real values. The id
    comes before any user text and the ts after it, so the first id slot and the last
    ts slot are the real ones whatever a body contains.
    """
    encoded = orjson.dumps(data)
    head, rest = encoded.split(_ID_JSON, 1)
    middle, tail = rest.rsplit(_TS_JSON, 1)
    return head, middle, tail


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as the Go server printed times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    public_key: str
    name: str | None
    email: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    name: str
    is_private: bool
    key_hash: str | None


@dataclass(frozen=True, slots=True)
class Message:
    """A room message. ``to_redis`` is the Go server's Redis member format."""

    id: str
    room_id: str
    sender: str
    body: str
    ts: int
    pid: str | None = None

    def to_redis(self) -> dict:
        # Field order matters: members sharing a score sort by their bytes, and
        # starting with the id makes that the (ts, id) order.
        data = {"id": self.id, "room_id": self.room_id, "from": self.sender, "body": self.body}
        if self.pid:
            data["pid"] = self.pid
        data["ts"] = self.ts
        return data

    def to_public(self) -> dict:
        data = {"id": self.id, "from": self.sender, "body": self.body}
        if self.pid:
            data["pid"] = self.pid
        data["ts"] = self.ts
        return data

    @classmethod
    def draft(cls, room_id: str, sender: str, body: str, pid: str | None) -> Message:
        """A message whose id and ts are still slots, for :func:`spliced`."""
        return cls(ID_SLOT, room_id, sender, body, TS_SLOT, pid)  # type: ignore[arg-type]

    @classmethod
    def from_redis(cls, data: dict) -> Message:
        return cls(
            id=str(data["id"]),
            room_id=str(data.get("room_id", "")),
            sender=str(data.get("from", "")),
            body=str(data.get("body", "")),
            ts=int(data["ts"]),
            pid=data.get("pid") or None,
        )


# The layout ``Message.to_redis`` writes: {"id":"<26>","room_id":"<36>","from":…,"ts":n}
_ROOM_ID_AT, _ROOM_ID_FIELD = 34, b',"room_id":"'
_ROOM_ID_END = _ROOM_ID_AT + len(_ROOM_ID_FIELD) + 36  # the closing quote
_TS_FIELD = b'"ts":'


def public_json(member: bytes) -> tuple[bytes, int] | None:
    """A room message's REST JSON (``Message.to_public``) and ts, from its Redis member;
    None for an entry that is not a message.

    A member in the layout this server writes is cut (its room_id dropped), never
    decoded and encoded again; another (the Go server's, say) goes through ``Message``.
    The last ``"ts":`` of a member is its ts field: inside a body, quotes are escaped.
    """
    if member.startswith(_ROOM_ID_FIELD, _ROOM_ID_AT) and member.startswith(b'",', _ROOM_ID_END) \
            and member.endswith(b"}"):
        digits = member[member.rfind(_TS_FIELD) + len(_TS_FIELD):-1]
        if digits.isdigit():
            return member[:_ROOM_ID_AT] + member[_ROOM_ID_END + 1:], int(digits)
    try:
        message = Message.from_redis(orjson.loads(member))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return orjson.dumps(message.to_public()), message.ts


@dataclass(frozen=True, slots=True)
class DirectMessage:
    id: str
    sender: str
    recipient: str
    body: str
    ts: int

    def to_redis(self) -> dict:
        return {"id": self.id, "from": self.sender, "to": self.recipient, "body": self.body, "ts": self.ts}

    def to_public(self) -> dict:
        return {"id": self.id, "from": self.sender, "body": self.body, "ts": self.ts}

    @classmethod
    def from_redis(cls, data: dict) -> DirectMessage:
        return cls(
            id=str(data["id"]),
            sender=str(data.get("from", "")),
            recipient=str(data.get("to", "")),
            body=str(data.get("body", "")),
            ts=int(data["ts"]),
        )
