"""The frame reader and writers, pure: bytes in, events out."""

from __future__ import annotations

import os
import struct

import pytest

from aicq.edge.wsframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Close,
    FrameReader,
    Message,
    Ping,
    Pong,
    Violation,
    close_frame,
    control_frame,
    unmask,
)

LIMIT = 16 * 1024


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0,
          mask: bytes | None = None) -> bytes:
    """A client frame built by hand, so it can also be wrong."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = mask if mask is not None else os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def announced(opcode: int, length: int) -> bytes:
    """Only the header of a masked frame announcing ``length`` bytes (64-bit form)."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


def read(*chunks: bytes) -> list:
    reader = FrameReader(LIMIT)
    events: list = []
    for chunk in chunks:
        events += reader.feed(chunk)
    return events


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, LIMIT])
def test_unmask_is_the_xor_with_the_repeated_mask(size: int) -> None:
    payload, mask = os.urandom(size), os.urandom(4)
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000, 65535, 65536])
def test_text_and_binary_messages_of_every_length_form(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # `size` bytes
    data = os.urandom(size)
    reader = FrameReader(1 << 17)
    assert reader.feed(frame(TEXT, text.encode()) + frame(BINARY, data)) == [Message(text=text), Message(data=data)]


def test_frames_split_at_every_byte_and_joined_in_one_chunk_read_the_same() -> None:
    stream = (frame(TEXT, b'{"op": "ping"}') + frame(PING, b"hi") + frame(TEXT, "ü".encode() * 200)
              + frame(PONG, b"") + frame(BINARY, b"\x00\x01"))
    expected = [Message(text='{"op": "ping"}'), Ping(b"hi"), Message(text="ü" * 200), Pong(b""),
                Message(data=b"\x00\x01")]
    assert read(stream) == expected
    for cut in range(1, len(stream)):
        assert read(stream[:cut], stream[cut:]) == expected
    assert read(*[stream[i:i + 1] for i in range(len(stream))]) == expected


def test_a_fragmented_message_with_a_control_frame_in_between() -> None:
    word = "né".encode()  # the é is cut between two fragments
    events = read(frame(TEXT, word[:2], fin=False), frame(PING, b"x"), frame(CONTINUATION, word[2:], fin=False),
                  frame(CONTINUATION, b"!"))
    assert events == [Ping(b"x"), Message(text="né!")]


def test_a_frame_announcing_more_than_the_limit_is_refused_before_its_payload() -> None:
    for opcode in (TEXT, BINARY):
        assert read(announced(opcode, LIMIT + 1)) == [Violation(1009, f"message over {LIMIT} bytes")]
        assert read(announced(opcode, 2**40))[0].code == 1009
    assert read(frame(TEXT, b"x" * LIMIT)) == [Message(text="x" * LIMIT)]


def test_a_message_over_the_limit_across_fragments_is_refused() -> None:
    half = b"x" * (LIMIT // 2)
    events = read(frame(TEXT, half, fin=False), frame(CONTINUATION, half, fin=False), frame(CONTINUATION, b"x"))
    assert [e.code for e in events] == [1009]


@pytest.mark.parametrize(("data", "code"), [
    (frame(TEXT, b"hi", masked=False), 1002),
    (frame(TEXT, b"hi", rsv=0x40), 1002),
    (frame(TEXT, b"hi", rsv=0x10), 1002),
    *[(frame(opcode, b"hi"), 1002) for opcode in (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)],
    (frame(CONTINUATION, b"hi"), 1002),
    (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    (frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"), 1002),
    (frame(PING, b"x", fin=False), 1002),
    (frame(PING, b"x" * 126), 1002),
    (frame(CLOSE, b"\x03"), 1002),
    (frame(TEXT, b"\xff"), 1007),
    (frame(TEXT, b"\xc3\x28"), 1007),
    (frame(TEXT, b"\xed\xa0\x80"), 1007),  # a UTF-16 surrogate, encoded
    (frame(TEXT, b"\xe2\x82", fin=False) + frame(CONTINUATION, b"x"), 1007),
])
def test_violations_carry_the_close_code_rfc_6455_gives_them(data: bytes, code: int) -> None:
    events = read(data)
    assert len(events) == 1 and isinstance(events[0], Violation) and events[0].code == code


def test_events_before_a_violation_are_kept_and_nothing_after_it_is_read() -> None:
    reader = FrameReader(LIMIT)
    events = reader.feed(frame(TEXT, b"one") + frame(0x3, b"") + frame(TEXT, b"two"))
    assert events[0] == Message(text="one") and isinstance(events[1], Violation) and len(events) == 2
    with pytest.raises(AssertionError):
        reader.feed(frame(TEXT, b"three"))


@pytest.mark.parametrize(("payload", "event"), [
    (b"", Close(1005, "", b"")),
    (struct.pack("!H", 1000), Close(1000, "", struct.pack("!H", 1000))),
    (struct.pack("!H", 1001) + "bye ✓".encode(), Close(1001, "bye ✓", struct.pack("!H", 1001) + "bye ✓".encode())),
    (struct.pack("!H", 4000), Close(4000, "", struct.pack("!H", 4000))),
    *[(struct.pack("!H", code), Violation(1002, f"invalid close code {code}"))
      for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000)],
    (struct.pack("!H", 1000) + b"\xff", Violation(1007, "invalid UTF-8 in the close reason")),
])
def test_close_frames(payload: bytes, event: object) -> None:
    assert read(frame(CLOSE, payload)) == [event]


def test_server_frames() -> None:
    assert close_frame(1013, "too slow") == b"\x88\x0a\x03\xf5too slow"
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    long = close_frame(1008, "é" * 100)  # cut between characters, never inside one
    assert long[1] == len(long) - 2 == 124 and long[4:].decode() == "é" * 61
    assert control_frame(PONG, b"abc") == b"\x8a\x03abc"
    assert control_frame(PING, b"") == b"\x89\x00"
    with pytest.raises(AssertionError):
        control_frame(PONG, b"x" * 126)
