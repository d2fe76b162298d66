"""WebSocket protocol v1 frames (SPEC §6), pure: parse client ops, encode server frames.

Nothing here touches a socket or a store, so every rule is tested with values.
Server events are encoded once per message, by whoever publishes it, and the
same bytes go to every subscriber on every instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aicq.errors import BadRequest
from aicq.models import DirectMessage, Message

VERSION = 1
MAX_FRAME_BYTES = 16 * 1024
MAX_REF_CHARS = 64
OPS = frozenset({"auth", "subscribe", "unsubscribe", "post", "dm", "delete", "ping"})


@dataclass(frozen=True)
class Op:
    """One client request; ``ref`` is echoed in the answer, whatever it was."""

    name: str
    ref: Any = None
    args: dict[str, Any] = field(default_factory=dict)


class FrameError(BadRequest):
    """A frame that is not a valid op; carries the ref when one could be read."""

    def __init__(self, message: str, ref: Any = None):
        super().__init__(message)
        self.ref = ref


def parse(frame: str | bytes) -> Op:
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise FrameError("frame must be a JSON object") from None
    if not isinstance(data, dict):
        raise FrameError("frame must be a JSON object")
    ref = data.pop("ref", None)
    if ref is not None and not (
        (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS)
        or (isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) < 1 << 53)
    ):
        raise FrameError(f"ref must be a string of at most {MAX_REF_CHARS} characters or an integer")
    name = data.pop("op", None)
    if not isinstance(name, str) or name not in OPS:
        raise FrameError("unknown op; expected one of " + ", ".join(sorted(OPS)), ref)
    return Op(name, ref, data)


def _encode(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def hello(session: str, agent: str | None, heartbeat: float, instance: str) -> bytes:
    return _encode({"type": "hello", "version": VERSION, "session": session, "agent": agent,
                    "heartbeat": heartbeat, "instance": instance})


def ok(ref: Any, **fields: Any) -> bytes:
    return _encode({"type": "ok", "ref": ref, **fields})


def error(ref: Any, code: int, message: str) -> bytes:
    return _encode({"type": "error", "ref": ref, "code": code, "error": message})


def pong(ref: Any, server_time: int) -> bytes:
    return _encode({"type": "pong", "ref": ref, "server_time": server_time})


def message_event_data(message: Message) -> dict[str, Any]:
    return {"type": "message", "room": message.room_id, "msg": message.to_public()}


def message_event(message: Message) -> bytes:
    return _encode(message_event_data(message))


def deleted_event(room_id: str, message_id: str) -> bytes:
    return _encode({"type": "deleted", "room": room_id, "id": message_id})


def dm_event(dm: DirectMessage) -> bytes:
    return _encode({"type": "dm", "msg": dm.to_public()})
