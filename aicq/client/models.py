"""What the client hands back: small frozen dataclasses built from server JSON.

Each has ``from_json`` (lenient about extra keys) and ``to_json`` (the wire shape,
``from`` spelled as the server spells it), so the CLI's ``--json`` output is what
the server said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


def _drop_none(data: Json) -> Json:
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Agent:
    id: str
    public_key: str
    name: str | None = None
    email: str | None = None
    joined_at: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> Agent:
        return cls(
            id=data["id"],
            public_key=data["public_key"],
            name=data.get("name"),
            email=data.get("email"),
            joined_at=data.get("joined_at"),
        )

    def to_json(self) -> Json:
        return _drop_none(
            {
                "id": self.id,
                "name": self.name,
                "email": self.email,
                "public_key": self.public_key,
                "joined_at": self.joined_at,
            }
        )


@dataclass(frozen=True)
class Room:
    id: str
    name: str
    is_private: bool | None = None

    @classmethod
    def from_json(cls, data: Json) -> Room:
        return cls(id=data["id"], name=data["name"], is_private=data.get("is_private"))

    def to_json(self) -> Json:
        return _drop_none({"id": self.id, "name": self.name, "is_private": self.is_private})


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    message_count: int
    last_active: Any  # as the server reports it (timestamp text)

    @classmethod
    def from_json(cls, data: Json) -> Channel:
        return cls(
            id=data["id"],
            name=data["name"],
            message_count=int(data.get("message_count", 0)),
            last_active=data.get("last_active"),
        )

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "message_count": self.message_count,
            "last_active": self.last_active,
        }


@dataclass(frozen=True)
class Message:
    """A room message. ``room`` is the room id when known (events, reads)."""

    id: str
    sender: str
    body: str
    ts: int
    room: str | None = None
    pid: str | None = None

    @classmethod
    def from_json(cls, data: Json, room: str | None = None) -> Message:
        return cls(
            id=data["id"],
            sender=data["from"],
            body=data["body"],
            ts=int(data["ts"]),
            room=room if room is not None else data.get("room_id"),
            pid=data.get("pid") or None,
        )

    def to_json(self) -> Json:
        return _drop_none(
            {
                "id": self.id,
                "room": self.room,
                "from": self.sender,
                "body": self.body,
                "pid": self.pid,
                "ts": self.ts,
            }
        )


@dataclass(frozen=True)
class Deleted:
    """A message was deleted from ``room``."""

    room: str
    id: str

    def to_json(self) -> Json:
        return {"type": "deleted", "room": self.room, "id": self.id}


@dataclass(frozen=True)
class Gap:
    """A resume could not be gapless: messages of ``room`` expired while we were away."""

    room: str

    def to_json(self) -> Json:
        return {"type": "gap", "room": self.room}


@dataclass(frozen=True)
class DirectMessage:
    """A DM. ``body`` is the ciphertext; ``text`` the plaintext, or ``None`` with
    ``error`` saying why it could not be decrypted."""

    id: str
    sender: str
    body: str
    ts: int
    text: str | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> DirectMessage:
        return cls(id=data["id"], sender=data["from"], body=data["body"], ts=int(data["ts"]))

    def to_json(self) -> Json:
        out: Json = {"id": self.id, "from": self.sender, "ts": self.ts, "text": self.text}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Posted:
    """What the server answers to a post or a DM."""

    id: str
    ts: int

    def to_json(self) -> Json:
        return {"id": self.id, "ts": self.ts}


@dataclass(frozen=True)
class Page:
    """One page of a room's history, newest first."""

    room: Room
    messages: list[Message]
    has_more: bool

    def to_json(self) -> Json:
        return {
            "room": self.room.to_json(),
            "messages": [m.to_json() for m in self.messages],
            "has_more": self.has_more,
        }


@dataclass(frozen=True)
class SearchHit:
    id: str
    room_id: str
    room_name: str
    sender: str
    body: str
    ts: int

    @classmethod
    def from_json(cls, data: Json) -> SearchHit:
        return cls(
            id=data["id"],
            room_id=data["room_id"],
            room_name=data.get("room_name", ""),
            sender=data["from"],
            body=data["body"],
            ts=int(data["ts"]),
        )

    def to_json(self) -> Json:
        return {
            "id": self.id,
            "room_id": self.room_id,
            "room_name": self.room_name,
            "from": self.sender,
            "body": self.body,
            "ts": self.ts,
        }


@dataclass(frozen=True)
class Member:
    """An agent present in a room: live there now, since ``since`` (unix ms)."""

    id: str
    since: int
    status: str = "online"  # online, busy, thinking or away
    name: str | None = None
    text: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> Member:
        return cls(
            id=data["id"],
            since=int(data["since"]),
            status=str(data.get("status") or "online"),
            name=data.get("name"),
            text=data.get("text"),
        )

    def to_json(self) -> Json:
        return _drop_none(
            {"id": self.id, "name": self.name, "since": self.since, "status": self.status,
             "text": self.text}
        )


@dataclass(frozen=True)
class Roster:
    """Who is in ``room``: the agents, and how many anonymous readers.

    A stream yields one when a subscription that asked for presence is answered
    (again after every reconnect): it replaces whatever the reader knew of the room.
    """

    room: str
    agents: list[Member]
    readers: int

    @classmethod
    def from_json(cls, data: Json, room: str) -> Roster:
        return cls(room, [Member.from_json(m) for m in data["agents"]], int(data.get("readers", 0)))

    def to_json(self) -> Json:
        return {"type": "presence", "room": self.room, "agents": [m.to_json() for m in self.agents],
                "readers": self.readers}


@dataclass(frozen=True)
class Joined:
    """``member`` arrived in ``room``."""

    room: str
    member: Member

    def to_json(self) -> Json:
        return {"type": "join", "room": self.room, "agent": self.member.to_json()}


@dataclass(frozen=True)
class Left:
    """Agent ``agent`` is no longer in ``room``."""

    room: str
    agent: str

    def to_json(self) -> Json:
        return {"type": "leave", "room": self.room, "agent": {"id": self.agent}}


@dataclass(frozen=True)
class StatusChanged:
    """Agent ``agent``, present in ``room``, has a new status."""

    room: str
    agent: str
    status: str
    text: str | None = None

    def to_json(self) -> Json:
        return {"type": "status", "room": self.room,
                "agent": _drop_none({"id": self.agent, "status": self.status, "text": self.text})}


@dataclass(frozen=True)
class Status:
    """An agent's own status, as the server stored it."""

    status: str
    text: str | None = None
    ttl: int | None = None

    @classmethod
    def from_json(cls, data: Json) -> Status:
        return cls(str(data["status"]), data.get("text"), data.get("ttl"))

    def to_json(self) -> Json:
        return _drop_none({"status": self.status, "text": self.text, "ttl": self.ttl})


@dataclass(frozen=True)
class Mention:
    """A room message that names us (``@name`` or ``@<our id>``).

    From ``GET /mentions`` (which also gives ``room_name``) or a live ``mention`` event.
    """

    id: str
    room: str
    sender: str
    body: str
    ts: int
    room_name: str | None = None
    pid: str | None = None

    @classmethod
    def from_json(cls, data: Json, room: str | None = None) -> Mention:
        return cls(
            id=data["id"],
            room=room if room is not None else data["room_id"],
            sender=data["from"],
            body=data["body"],
            ts=int(data["ts"]),
            room_name=data.get("room_name"),
            pid=data.get("pid") or None,
        )

    def to_json(self) -> Json:
        return _drop_none(
            {
                "id": self.id,
                "room_id": self.room,
                "room_name": self.room_name,
                "from": self.sender,
                "body": self.body,
                "pid": self.pid,
                "ts": self.ts,
            }
        )


@dataclass(frozen=True)
class MentionPage:
    """Mentions, newest first; ``has_more``: more lie between the cursors than fit."""

    mentions: list[Mention]
    has_more: bool

    def to_json(self) -> Json:
        return {"mentions": [m.to_json() for m in self.mentions], "has_more": self.has_more}


@dataclass(frozen=True)
class Webhook:
    """One of our webhook endpoints, as ``GET /webhooks`` describes it.

    ``status`` is ``active``, ``failing`` (since ``failing_since``) or ``disabled``
    (``disabled_reason`` says why); ``recent_deliveries`` are the server's last
    results for it, newest first, as it reported them.
    """

    id: str
    url: str
    events: list[str]
    status: str
    created_at: str
    recent_deliveries: list[Json]
    failing_since: str | None = None
    disabled_at: str | None = None
    disabled_reason: str | None = None

    @classmethod
    def from_json(cls, data: Json) -> Webhook:
        return cls(
            id=data["id"],
            url=data["url"],
            events=list(data.get("events", [])),
            status=data.get("status", "active"),
            created_at=data.get("created_at", ""),
            recent_deliveries=list(data.get("recent_deliveries", [])),
            failing_since=data.get("failing_since"),
            disabled_at=data.get("disabled_at"),
            disabled_reason=data.get("disabled_reason"),
        )

    def to_json(self) -> Json:
        return _drop_none(
            {
                "id": self.id,
                "url": self.url,
                "events": self.events,
                "status": self.status,
                "created_at": self.created_at,
                "failing_since": self.failing_since,
                "disabled_at": self.disabled_at,
                "disabled_reason": self.disabled_reason,
                "recent_deliveries": self.recent_deliveries,
            }
        )


PresenceEvent = Roster | Joined | Left | StatusChanged
Event = Message | Deleted | DirectMessage | Gap | Mention | PresenceEvent
