"""WebSocket fuzzing: hypothesis sends bursts of hostile frames to sessions on a running server.

A burst is a few frames on one fresh session (anonymous, or authenticated first so
post/dm/delete really run): JSON ops with random names and argument values (wrong
types, huge numbers, deep nesting, odd unicode), text that is not JSON, binary
frames, invalid UTF-8, frames over 16 KB, reserved opcodes, fragments, control
frames. After each burst:

- the fuzzed session answered every frame (``ok``/``error``/``pong``, never code
  500) and then the closing ping, or it was closed with the code its worst frame
  calls for: 1007 invalid UTF-8, 1009 too big, 1008 policy (failed auth), 1002 a
  protocol error (reserved opcode, bad fragmentation; RFC 6455 §7.4.1);
- the server process is alive and a bystander session still answers ``ping``
  promptly.

Hypothesis runs synchronously; the sessions live on one event loop in a thread so
the bystander outlasts every example.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from tests.helpers import Agent, new_agent, recv_json
from tests.resilience.fuzz_support import (  # noqa: F401 - figures is a fixture
    RawSession,
    alive,
    client_frame,
    figures,
    percentile,
    ping_once,
)

MAX_EXAMPLES = 500
ANSWER_TIMEOUT_S = 5.0
BYSTANDER_MAX_S = 1.0
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
OPS = ["auth", "subscribe", "unsubscribe", "post", "dm", "delete", "ping"]
ARG_NAMES = ["room", "key", "since", "body", "pid", "to", "id", "agent", "nonce", "ts", "sig", "ref", "op"]


@dataclass(repr=False)
class Frame:
    """One thing the fuzzer sends, and what the server owes it."""

    data: bytes
    kind: str  # "op" (answered), "binary" (answered with an error), "silent", or a close code as text
    label: str
    # A frame sent whole after the server may already have refused it: the server's close
    # frame can be lost to the TCP reset that its close causes (data still in flight), so
    # an abortive close (1006) is accepted for it as well as its code.
    reset_ok: bool = False

    def __repr__(self) -> str:
        return f"<{self.label}: {len(self.data)} bytes>"


def _close(code: int, data: bytes, label: str) -> Frame:
    return Frame(data, str(code), label)


# Strategies

_huge_ints = st.one_of(st.integers(), st.sampled_from([2**53, -(2**53), 2**63, 2**64 + 1, 10**30, -(10**30)]))
_strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "global", "\u0000", "\u202e", "\ufeff", "00000000-0000-0000-0000-000000000001",
                     "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x" * 5000, "../../etc/passwd", "%00", "🙂" * 100]),
)
_scalars = st.one_of(st.none(), st.booleans(), _huge_ints, st.floats(allow_nan=False), _strings)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


@st.composite
def op_frames(draw: Any, rooms: list[str]) -> Frame:
    """A JSON object that looks more or less like an op."""
    name = draw(st.one_of(st.sampled_from(OPS), st.text(max_size=12), _scalars))
    values = st.one_of(_json_values, st.sampled_from(rooms))
    args = draw(st.dictionaries(st.sampled_from(ARG_NAMES), values, max_size=5))
    frame: dict[str, Any] = {"op": name, **args} if draw(st.booleans()) or "op" not in args else args
    # json (not orjson): it writes what orjson refuses too, such as big ints and lone surrogates
    text = json.dumps(frame, ensure_ascii=draw(st.booleans()))
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, unescaped: not UTF-8 at all
        return _close(1007, client_frame(TEXT, text.encode("utf-8", "surrogatepass")), "op with raw surrogate")
    if len(data) > 16 * 1024:
        return _close(1009, client_frame(TEXT, data), "op over 16 KB")
    return Frame(client_frame(TEXT, data), "op", f"op {str(name)[:12]!r}")


@st.composite
def plausible_ops(draw: Any, rooms: list[str], agent_id: str, room_key: str) -> Frame:
    """A real op whose fields are mostly right, sometimes oddly so: these reach the service."""
    def field(right: st.SearchStrategy) -> Any:
        return draw(st.one_of(right, right, right, _json_values))

    name = draw(st.sampled_from(["subscribe", "unsubscribe", "post", "dm", "delete", "ping", "subscribe", "post"]))
    args: dict[str, Any] = {"op": name, "ref": draw(st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=64)))}
    if name in ("subscribe", "unsubscribe", "post", "delete"):
        args["room"] = field(st.sampled_from(rooms))
    if name == "subscribe" and draw(st.booleans()):
        args["since"] = field(st.one_of(st.integers(0, 2**53), st.just("01ARZ3NDEKTSV4RRFFQ69G5FAV")))
    if name == "post":
        args["body"] = field(st.text(min_size=1, max_size=300))
        if draw(st.booleans()):
            args["pid"] = field(st.just("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    if name == "dm":
        args["to"] = field(st.just(agent_id))
        args["body"] = field(st.binary(min_size=50, max_size=200).map(lambda b: base64.b64encode(b).decode()))
    if name == "delete":
        args["id"] = field(st.just("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    if name in ("subscribe", "post") and draw(st.booleans()):
        args["key"] = field(st.one_of(st.just(room_key), st.text(max_size=80)))
    data = json.dumps(args).encode()  # ASCII: lone surrogates go out escaped
    if len(data) > 16 * 1024:
        return _close(1009, client_frame(TEXT, data), "oversize op")
    return Frame(client_frame(TEXT, data), "op", f"plausible {name}")


@st.composite
def hostile_frames(draw: Any, rooms: list[str], agent_id: str, room_key: str) -> Frame:
    choice = draw(st.integers(0, 13))
    if choice <= 3:
        return draw(op_frames(rooms))
    if choice >= 12:
        return draw(plausible_ops(rooms, agent_id, room_key))
    if choice == 4:  # text that is not a JSON object
        value = draw(st.one_of(st.text(max_size=200), _json_values.map(lambda v: json.dumps(v))))
        data = value.encode("utf-8", "surrogatepass")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return _close(1007, client_frame(TEXT, data), "text with raw surrogate")
        return Frame(client_frame(TEXT, data), "op", "not an object")
    if choice == 5:  # deep nesting, mostly within the size limit
        depth = draw(st.integers(100, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        data = (opener * depth + "1" + closer * depth).encode()
        if len(data) > 16 * 1024:
            return _close(1009, client_frame(TEXT, data), f"nested {depth} over 16 KB")
        return Frame(client_frame(TEXT, data), "op", f"nested {depth}")
    if choice == 6:  # invalid UTF-8 in a text frame
        prefix = draw(st.binary(max_size=20))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]))
        return _close(1007, client_frame(TEXT, b'{"op": "ping", "x": "' + prefix.hex().encode() + bad + b'"}'),
                      "invalid UTF-8")
    if choice == 7:  # binary frames are refused with an error, the session stays
        return Frame(client_frame(BINARY, draw(st.binary(max_size=300))), "binary", "binary")
    if choice == 8:  # over 16 KB: refused on the length in its header
        size = draw(st.integers(16 * 1024 + 1, 2**40))
        opcode = draw(st.sampled_from([TEXT, BINARY]))
        whole = size <= 256 * 1024 and draw(st.booleans())
        if whole:
            return Frame(client_frame(opcode, b"x" * size), "1009", f"oversize {size} whole", reset_ok=True)
        partial = b"x" * draw(st.integers(0, 4096))  # the announced length, then a little of it
        return _close(1009, _announced(opcode, size, partial), f"oversize {size} announced")
    if choice == 9:  # reserved opcodes and a continuation with nothing to continue
        opcode = draw(st.sampled_from([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF, CONTINUATION]))
        return _close(1002, client_frame(opcode, draw(st.binary(max_size=20))), f"opcode {opcode:#x}")
    if choice == 10:  # a valid op split into fragments
        payload = orjson.dumps({"op": "ping", "ref": draw(st.integers(0, 1000))})
        cut = draw(st.integers(1, len(payload) - 1))
        data = client_frame(TEXT, payload[:cut], fin=False) + client_frame(CONTINUATION, payload[cut:])
        return Frame(data, "op", "fragmented ping")
    # control frames: a ping the server must pong (silently for us), an unsolicited pong
    return Frame(client_frame(draw(st.sampled_from([PING, PONG])), draw(st.binary(max_size=125))), "silent", "control")


def _announced(opcode: int, length: int, partial: bytes) -> bytes:
    """A masked frame header announcing ``length`` bytes (64-bit form), followed by only ``partial``."""
    mask = os.urandom(4)
    return (bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big") + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(partial)))


# The loop the sessions live on


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Record:
    bursts: int = 0
    frames: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    bystander: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def _burst(port: int, agent: Agent | None, frames: list[Frame], record: Record) -> list[str]:
    """Send one burst on a fresh session and judge the answers; returns what went wrong."""
    problems: list[str] = []
    session = await RawSession.open(port)
    try:
        hello = await session.recv_json(ANSWER_TIMEOUT_S)
        assert hello and hello["type"] == "hello", hello
        if agent is not None:
            await session.send(client_frame(TEXT, orjson.dumps(agent.auth_frame("auth"))))
            answer = await session.recv_json(ANSWER_TIMEOUT_S)
            assert answer and answer["type"] == "ok", answer
        # The first frame that must close the session decides the code; nothing after it counts.
        closing = next((f for f in frames if f.kind.isdigit()), None)
        sent = frames[: frames.index(closing) + 1] if closing else frames
        owed = sum(1 for f in sent if f.kind in ("op", "binary"))
        for frame in sent:
            record.frames[frame.label.split(" ")[0]] += 1
            await session.send(frame.data)
        if closing is None:
            await session.send(client_frame(TEXT, b'{"op": "ping", "ref": "sentinel"}'))
        answers = 0
        while True:
            try:
                message = await session.recv_json(ANSWER_TIMEOUT_S)
            except EOFError:
                message, session.close_code = None, session.close_code or 1006
            if message is None:  # closed
                code = session.close_code
                if closing is not None and code == int(closing.kind):
                    record.outcomes[f"closed {code} as owed"] += 1
                elif closing is not None and closing.reset_ok and code == 1006:
                    record.outcomes["reset while still sending an oversized frame"] += 1
                elif code == 1008:
                    # an `auth` op that failed: answered with an error, then closed (SPEC §6)
                    record.outcomes["closed 1008 after a failed auth op"] += 1
                else:
                    problems.append(f"closed {code}; owed {closing.kind if closing else 'answers'}: "
                                    f"{[f.label for f in sent]}")
                return problems
            kind = message.get("type")
            if kind == "error":
                record.error_codes[message.get("code")] += 1
                if message.get("code") == 500 or not isinstance(message.get("error"), str):
                    problems.append(f"error frame {message} after {[f.label for f in sent]}")
            if message.get("ref") == "sentinel" and kind == "pong":
                if closing is not None:
                    problems.append(f"not closed though owed {closing.kind}: {[f.label for f in sent]}")
                elif answers < owed:
                    problems.append(f"{answers} answers for {owed} frames: {[f.label for f in sent]}")
                else:
                    record.outcomes["answered every frame"] += 1
                return problems
            if kind in ("ok", "error", "pong"):
                answers += 1
                record.answers[kind] += 1
    finally:
        await session.close()


@pytest.fixture(scope="module")
def ws_fuzz_server(start_module_server):
    return start_module_server()


def test_ws_fuzzing_never_crashes_or_hangs(ws_fuzz_server, figures) -> None:  # noqa: F811
    server = ws_fuzz_server
    loop = Loop()
    record = Record()
    started = time.monotonic()

    room_key = secrets.token_hex(12)

    async def setup() -> tuple[Agent, list[str], Any]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            agent = await new_agent(http, "ws-fuzzer")
            public = (await agent.create_room(http))["id"]
            private = (await agent.create_room(http, key=room_key))["id"]
        bystander = await connect(server.ws_url, max_size=None)
        await recv_json(bystander)
        await bystander.send(orjson.dumps({"op": "subscribe", "room": public, "ref": "s"}).decode())
        return agent, [public, private, "global"], bystander

    agent, rooms, bystander = loop.run(setup())
    try:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(frames=st.lists(hostile_frames(rooms, agent.id, room_key), min_size=1, max_size=6), signed_in=st.booleans())
        def burst(frames: list[Frame], signed_in: bool) -> None:
            record.bursts += 1
            problems = loop.run(_burst(server.port, agent if signed_in else None, frames, record))
            record.problems += problems
            assert alive(server), "the server process died"
            latency = loop.run(ping_once(bystander, f"bystander-{record.bursts}", timeout=BYSTANDER_MAX_S * 5))
            record.bystander.append(latency)
            assert latency < BYSTANDER_MAX_S, f"bystander pong took {latency:.3f}s"
            assert not problems, problems

        burst()
    finally:
        loop.run(bystander.close())
        loop.close()
        elapsed = time.monotonic() - started
        failing = [r for r in _log_records(server.log_text()) if "Traceback" in r or "op failed" in r]
        # uvicorn logs every text frame with invalid UTF-8 at ERROR with a traceback, then
        # closes with 1007 as it should: noise a client can cause, reported, not a crash.
        utf8_noise = [r for r in failing if "Invalid UTF-8 sequence received from client" in r]
        unexpected = [r for r in failing if r not in utf8_noise]
        figures("WebSocket fuzzing (hypothesis)", {
            "bursts": record.bursts,
            "frames by kind": dict(record.frames.most_common()),
            "outcomes": dict(record.outcomes.most_common()),
            "answers by type": dict(record.answers.most_common()),
            "error codes answered": dict(sorted(record.error_codes.items(), key=str)),
            "problems": record.problems[:5] or "none",
            "bystander pong p50 / p99 / max (ms)": " / ".join(
                f"{percentile(record.bystander, q) * 1000:.1f}" for q in (0.5, 0.99, 1.0)),
            "wall time (s)": round(elapsed, 1),
            "uvicorn tracebacks logged for invalid UTF-8 (noise)": len(utf8_noise),
        })
    assert not unexpected, unexpected[:3]


def _log_records(text: str) -> list[str]:
    """The server's log, one string per record (a traceback stays with its line)."""
    records: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\d\d:\d\d:\d\d ", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    return records
