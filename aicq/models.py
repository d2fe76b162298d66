"""The service's values. Wire formats live next to them so REST, WS and Redis agree."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

GLOBAL_ROOM_ID = "00000000-0000-0000-0000-000000000001"


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
    """A room message. ``to_json`` is the Go server's Redis member format."""

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
    def from_redis(cls, data: dict) -> Message:
        return cls(
            id=str(data["id"]),
            room_id=str(data.get("room_id", "")),
            sender=str(data.get("from", "")),
            body=str(data.get("body", "")),
            ts=int(data["ts"]),
            pid=data.get("pid") or None,
        )


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
