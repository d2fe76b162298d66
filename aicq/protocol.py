"""WebSocket protocol v1 (SPEC §6), pure: typed client ops, server frames, close codes.

Nothing here touches a socket or a store, so every rule is tested with values.
A client frame is parsed once, at the boundary, into one of the small op types
below; everything past ``parse`` works with typed values. Server events are
encoded once per message, by whoever publishes it, and the same bytes go to every
subscriber on every instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from aicq import auth, validation
from aicq.errors import AICQError, BadRequest
from aicq.models import DirectMessage, Message

VERSION = 1
MAX_FRAME_BYTES = 16 * 1024
MAX_REF_CHARS = 64


# Close codes: the one table server, client and docs use.


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    meaning: str
    reconnect: bool  # True: reconnect and resume with `since`; False: fix the request first


CLOSE_RESTART = CloseCode(1012, "service restart: the instance is shutting down", True)
CLOSE_TRY_AGAIN = CloseCode(
    1013, "try again later: the session fell behind its queue, or a store is briefly unavailable", True)
CLOSE_POLICY = CloseCode(1008, "policy violation: authentication failed, or the IP is blocked", False)
CLOSE_TOO_BIG = CloseCode(1009, f"frame too big (over {MAX_FRAME_BYTES // 1024} KB)", False)
CLOSE_BAD_DATA = CloseCode(1007, "invalid UTF-8 in a text frame", False)
CLOSE_INTERNAL = CloseCode(1011, "internal error (or /ws served by something other than `aicq serve`)", True)

CLOSE_CODES: dict[int, CloseCode] = {
    c.code: c for c in (CLOSE_RESTART, CLOSE_TRY_AGAIN, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_BAD_DATA,
                        CLOSE_INTERNAL)
}


def should_reconnect(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect and resume.

    Codes outside the table (an abnormal closure, a proxy's own) are treated as
    transient: reconnecting is the only way to find out.
    """
    known = CLOSE_CODES.get(code)
    return known is None or known.reconnect


# Client ops


@dataclass(frozen=True, slots=True)
class Auth:
    credentials: auth.Credentials


@dataclass(frozen=True, slots=True)
class Subscribe:
    room: str
    key: str | None = None
    since: int | str | None = None  # unix ms or a message id; None: live only
    presence: bool = False  # also who is here: in the ok, then join/leave/status events


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    room: str


@dataclass(frozen=True, slots=True)
class Post:
    room: str
    body: object  # the service validates bodies, one rule for REST and WS
    pid: object = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SendDM:
    to: str
    body: object


@dataclass(frozen=True, slots=True)
class Delete:
    room: str
    id: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    status: object  # the service validates, one rule for REST and WS
    text: object = None
    ttl: object = None


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Op = Auth | Subscribe | Unsubscribe | Post | SendDM | Delete | SetStatus | Ping


@dataclass(frozen=True, slots=True)
class Request:
    """One client frame: the op, and the ``ref`` its answer echoes, whatever it was."""

    ref: Any
    op: Op


class FrameError(AICQError):
    """A frame that is not a valid op; carries the ref when one could be read."""

    def __init__(self, error: AICQError, ref: Any = None):
        super().__init__(error.message)
        self.status = error.status
        self.ref = ref


def _string(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def _optional_string(args: dict[str, Any], name: str) -> str | None:
    return None if args.get(name) is None else _string(args, name)


def _flag(args: dict[str, Any], name: str) -> bool:
    value = args.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def _auth(args: dict[str, Any]) -> Auth:
    ts = args.get("ts")
    if isinstance(ts, int) and not isinstance(ts, bool):
        ts = str(ts)  # a number or a string, as clients find easier
    return Auth(auth.credentials(args.get("agent"), args.get("nonce"), ts, args.get("sig")))


_PARSERS: dict[str, Any] = {
    "auth": _auth,
    "subscribe": lambda a: Subscribe(_string(a, "room"), _optional_string(a, "key"),
                                     validation.cursor(a.get("since"), "since"), _flag(a, "presence")),
    "unsubscribe": lambda a: Unsubscribe(_string(a, "room")),
    "post": lambda a: Post(_string(a, "room"), a.get("body"), a.get("pid"), _optional_string(a, "key")),
    "dm": lambda a: SendDM(_string(a, "to"), a.get("body")),
    "delete": lambda a: Delete(_string(a, "room"), _string(a, "id")),
    "status": lambda a: SetStatus(a.get("status"), a.get("text"), a.get("ttl")),
    "ping": lambda a: Ping(),
}
OPS = frozenset(_PARSERS)


def parse(frame: str | bytes) -> Request:
    """The typed request in ``frame``.

    Raises:
        FrameError: not JSON, not an object, an unusable ``ref``, an unknown op, or
            arguments of the wrong shape (400; 401 for malformed ``auth`` values).
    """
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise FrameError(BadRequest("frame must be a JSON object")) from None
    if not isinstance(data, dict):
        raise FrameError(BadRequest("frame must be a JSON object"))
    ref = data.pop("ref", None)
    if ref is not None and not (
        (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS)
        or (isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) < 1 << 53)
    ):
        raise FrameError(BadRequest(
            f"ref must be a string of at most {MAX_REF_CHARS} characters or an integer"))
    name = data.pop("op", None)
    parser = _PARSERS.get(name) if isinstance(name, str) else None
    if parser is None:
        raise FrameError(BadRequest("unknown op; expected one of " + ", ".join(sorted(OPS))), ref)
    try:
        return Request(ref, parser(data))
    except AICQError as exc:
        raise FrameError(exc, ref) from None


# Server frames

# Presence events (``{"type", "room", "agent": {"id", ...}}``) are encoded by the
# presence scripts in Redis, in the same script as the change they announce; a
# ``presence`` event (``{"type", "room", "agents", "readers"}``: the whole roster)
# follows a hub's reconnection, since presence events, unlike messages, have no history.
PRESENCE_EVENTS = frozenset({"join", "leave", "status", "presence"})


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (what a server sends)."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def _encode(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def hello(session: str, agent: str | None, heartbeat: float, instance: str) -> bytes:
    return _encode({"type": "hello", "version": VERSION, "session": session, "agent": agent,
                    "heartbeat": heartbeat, "instance": instance})


def ok(ref: Any, **fields: Any) -> bytes:
    return _encode({"type": "ok", "ref": ref, **fields})


def error(ref: Any, code: int, message: str, retry_after: int | None = None) -> bytes:
    """An op's refusal; ``retry_after`` (seconds) is what REST says in Retry-After (429, 503)."""
    frame: dict[str, Any] = {"type": "error", "ref": ref, "code": code, "error": message}
    if retry_after is not None:
        frame["retry_after"] = retry_after
    return _encode(frame)


def pong(ref: Any, server_time: int) -> bytes:
    return _encode({"type": "pong", "ref": ref, "server_time": server_time})


def message_event_data(message: Message) -> dict[str, Any]:
    return {"type": "message", "room": message.room_id, "msg": message.to_public()}


def message_event(message: Message) -> bytes:
    return _encode(message_event_data(message))


def mention_event_data(message: Message) -> dict[str, Any]:
    """A room message naming the agent, sent to that agent's sessions (on its DM channel)."""
    return {"type": "mention", "room": message.room_id, "msg": message.to_public()}


def deleted_event(room_id: str, message_id: str) -> bytes:
    return _encode({"type": "deleted", "room": room_id, "id": message_id})


def dm_event(dm: DirectMessage) -> bytes:
    return _encode({"type": "dm", "msg": dm.to_public()})
