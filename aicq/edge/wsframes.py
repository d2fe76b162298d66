"""WebSocket frames after the handshake (RFC 6455 §5), pure: bytes in, events out.

A server reads masked client frames and writes unmasked ones. `FrameReader` takes
whatever the socket delivered and returns the complete events it holds; it keeps
at most one partial frame and one fragmented message between calls, both bounded
by the message limit, which a frame's header is checked against before any of its
payload is waited for. A protocol violation is the last event a reader returns,
with the close code RFC 6455 §7.4.1 gives it; the reader takes nothing after it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

PROTOCOL_ERROR = 1002
NO_STATUS = 1005
INVALID_DATA = 1007
TOO_BIG = 1009
# Close codes a peer may send (RFC 6455 §7.4, IANA registry; 3000-4999 for
# libraries and applications).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

PING_FRAME = b"\x89\x00"  # what the heartbeat sends: an empty ping


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``text`` for a text message, else ``data`` (binary)."""

    text: str | None = None
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame: its code (1005 when it gave none) and reason."""

    code: int
    reason: str
    payload: bytes  # as received: what the server echoes


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol: close with ``code``. Always the last event."""

    code: int
    reason: str


Event = Message | Ping | Pong | Close | Violation


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (one big-integer XOR, not a loop)."""
    length = len(payload)
    if not length:
        return payload
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


def close_frame(code: int, reason: str = "") -> bytes:
    """A server close frame; the reason is cut (whole characters) to fit a control frame."""
    payload = struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()
    return bytes([0x80 | CLOSE, len(payload)]) + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    """A server control frame (ping, pong, or a close echoing the peer's payload)."""
    assert len(payload) <= 125, "control frames carry at most 125 bytes"
    return bytes([0x80 | opcode, len(payload)]) + payload


def parse_close(payload: bytes) -> Close | Violation:
    if not payload:
        return Close(NO_STATUS, "", payload)
    if len(payload) == 1:
        return Violation(PROTOCOL_ERROR, "close frame too short")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE and not 3000 <= code < 5000:
        return Violation(PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        return Violation(INVALID_DATA, "invalid UTF-8 in the close reason")
    return Close(code, reason, payload)


class FrameReader:
    """Reads a client's frames; ``feed`` returns the events completed so far."""

    __slots__ = ("_buffer", "_fragments", "_limit", "_opcode", "_size", "_failed")

    def __init__(self, max_message: int):
        self._limit = max_message
        self._buffer = b""  # the start of a frame still incomplete
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._opcode = 0  # its opcode (TEXT or BINARY)
        self._size = 0  # its size so far
        self._failed = False

    def feed(self, data: bytes) -> list[Event]:
        assert not self._failed, "a reader takes nothing after a violation"
        if self._buffer:
            data = self._buffer + data
        events: list[Event] = []
        offset, end = 0, len(data)
        while end - offset >= 2:
            first, second = data[offset], data[offset + 1]
            opcode, length, start = first & 0x0F, second & 0x7F, offset + 2
            if length == 126:
                if end - start < 2:
                    break
                length, start = int.from_bytes(data[start:start + 2], "big"), start + 2
            elif length == 127:
                if end - start < 8:
                    break
                length, start = int.from_bytes(data[start:start + 8], "big"), start + 8
            problem = self._check_header(first, second, opcode, length)
            if problem is not None:
                return self._fail(events, problem)
            if end - start < 4 + length:
                break
            payload = unmask(data[start + 4:start + 4 + length], data[start:start + 4])
            offset = start + 4 + length
            event = self._frame(opcode, bool(first & 0x80), payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Violation):
                    return self._fail(events, None)
        self._buffer = data[offset:] if offset < end else b""
        return events

    def _check_header(self, first: int, second: int, opcode: int, length: int) -> Violation | None:
        """What the header alone says is wrong, before waiting for the payload."""
        if first & 0x70:
            return Violation(PROTOCOL_ERROR, "reserved bits must be 0")
        if not second & 0x80:
            return Violation(PROTOCOL_ERROR, "client frames must be masked")
        if opcode >= CLOSE:
            if opcode not in (CLOSE, PING, PONG):
                return Violation(PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
            if not first & 0x80:
                return Violation(PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                return Violation(PROTOCOL_ERROR, "control frame too long")
            return None
        if opcode not in (CONTINUATION, TEXT, BINARY):
            return Violation(PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
        if opcode == CONTINUATION and self._fragments is None:
            return Violation(PROTOCOL_ERROR, "unexpected continuation frame")
        if opcode != CONTINUATION and self._fragments is not None:
            return Violation(PROTOCOL_ERROR, "expected a continuation frame")
        if self._size + length > self._limit:
            return Violation(TOO_BIG, f"message over {self._limit} bytes")
        return None

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode == PING:
            return Ping(payload)
        if opcode == PONG:
            return Pong(payload)
        if opcode == CLOSE:
            return parse_close(payload)
        if opcode != CONTINUATION:
            if fin:
                return _message(opcode, payload)
            self._fragments, self._opcode, self._size = [payload], opcode, len(payload)
            return None
        assert self._fragments is not None
        self._fragments.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        self._fragments, self._size = None, 0
        return _message(self._opcode, whole)

    def _fail(self, events: list[Event], violation: Violation | None) -> list[Event]:
        self._failed = True
        self._buffer, self._fragments = b"", None
        if violation is not None:
            events.append(violation)
        return events


def _message(opcode: int, payload: bytes) -> Message | Violation:
    if opcode == BINARY:
        return Message(data=payload)
    try:
        return Message(text=payload.decode())
    except UnicodeDecodeError as exc:
        return Violation(INVALID_DATA, f"invalid UTF-8 at position {exc.start}")
