"""Each ``aicq`` client verb, run as its own process against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import stat
from pathlib import Path
from typing import Any

import orjson

from aicq.client import AsyncClient, Profile

from . import dm_reference
from .helpers import WAIT, cli, cli_command, cli_env, unique


async def _register(server: Any, profile: Path, name: str | None = None) -> str:
    result = await cli(server.url, profile, "register", name or unique("cli"), "--json")
    assert result.rc == 0, result.err
    agent_id = result.json()["id"]  # type: ignore[index]
    assert isinstance(agent_id, str)
    return agent_id


async def test_keygen_register_who(server: Any, tmp_path: Path) -> None:
    profile = tmp_path / "me"
    made = await cli(server.url, profile, "keygen", "--json")
    assert made.rc == 0, made.err
    public_key = made.json()["public_key"]  # type: ignore[index]
    key_file = profile / "private.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip(), validate=True)) == 32

    again = await cli(server.url, profile, "keygen")
    assert again.rc == 1 and "already exists" in again.err

    name = unique("Cli Agent ")
    reg = await cli(server.url, profile, "register", name, "--email", "cli@example.com")
    assert reg.rc == 0, reg.err
    stored = json.loads((profile / "agent.json").read_text())
    assert stored["public_key"] == public_key and set(stored) == {"id", "public_key"}
    assert stored["id"] in reg.out

    who = await cli(server.url, profile, "who", stored["id"], "--json")
    assert who.rc == 0, who.err
    info = who.json()
    assert info["id"] == stored["id"] and info["name"] == name  # type: ignore[index]
    assert info["public_key"] == public_key  # type: ignore[index]
    human = await cli(server.url, profile, "who", stored["id"])
    assert name in human.out and public_key in human.out

    # Registering the same key again gives back the same id.
    assert await _register(server, profile, name) == stored["id"]


async def test_room_verbs(server: Any, tmp_path: Path) -> None:
    profile = tmp_path / "me"
    me = await _register(server, profile)
    name = unique("room")
    made = await cli(server.url, profile, "create-room", name, "--json")
    assert made.rc == 0, made.err
    room_id = made.json()["id"]  # type: ignore[index]

    token = unique("word")
    first = await cli(server.url, profile, "post", name, f"hello {token}", "--json")
    assert first.rc == 0, first.err
    first_id = first.json()["id"]  # type: ignore[index]
    reply = await cli(
        server.url, profile, "post", room_id, "-", "--reply-to", first_id, stdin="from stdin\n"
    )
    assert reply.rc == 0, reply.err
    reply_id = reply.out.strip()

    page = await cli(server.url, profile, "read", name, "--json")
    assert page.rc == 0, page.err
    messages = page.json()["messages"]  # type: ignore[index]
    assert [m["id"] for m in messages] == [reply_id, first_id]
    assert messages[0]["pid"] == first_id and messages[0]["body"] == "from stdin"
    assert messages[1]["from"] == me

    limited = await cli(
        server.url, profile, "read", room_id, "--limit", "1", "--before", reply_id, "--json"
    )
    assert [m["id"] for m in limited.json()["messages"]] == [first_id]  # type: ignore[index]
    human = await cli(server.url, profile, "read", room_id)
    lines = human.out.splitlines()
    assert token in lines[0] and "from stdin" in lines[1]  # oldest first for people

    found = await cli(server.url, profile, "find", token, "--json")
    assert found.rc == 0, found.err
    assert [r["id"] for r in found.json()["results"]] == [first_id]  # type: ignore[index]
    assert first_id in (await cli(server.url, profile, "find", token)).out

    rooms = await cli(server.url, profile, "rooms", "--limit", "100", "--json")
    assert room_id in {c["id"] for c in rooms.json()["channels"]}  # type: ignore[index]
    assert name in (await cli(server.url, profile, "rooms", "--limit", "100")).out

    gone = await cli(server.url, profile, "delete", room_id, first_id)
    assert gone.rc == 0, gone.err
    after = await cli(server.url, profile, "read", room_id, "--json")
    assert [m["id"] for m in after.json()["messages"]] == [reply_id]  # type: ignore[index]


async def test_private_room_and_errors(server: Any, tmp_path: Path) -> None:
    profile = tmp_path / "me"
    await _register(server, profile)
    key = "a-long-room-key-123"
    made = await cli(
        server.url, profile, "create-room", unique("priv"), "--private", "--key", key, "--json"
    )
    assert made.rc == 0, made.err
    room_id = made.json()["id"]  # type: ignore[index]
    assert (await cli(server.url, profile, "post", room_id, "hush", "--key", key)).rc == 0

    refused = await cli(server.url, profile, "read", room_id)
    assert refused.rc == 1 and "403" in refused.err and refused.out == ""
    allowed = await cli(server.url, profile, "read", room_id, "--key", key, "--json")
    assert [m["body"] for m in allowed.json()["messages"]] == ["hush"]  # type: ignore[index]

    missing = await cli(server.url, profile, "post", unique("nosuch"), "x")
    assert missing.rc == 1 and "room not found" in missing.err and "Traceback" not in missing.err
    bad = await cli(server.url, profile, "create-room", "bad name!")
    assert bad.rc == 1 and "400" in bad.err
    nobody = await cli(server.url, tmp_path / "nobody", "post", "global", "x")
    assert nobody.rc == 1 and "private key" in nobody.err


async def test_global_is_addressable_by_name(server: Any, tmp_path: Path) -> None:
    profile = tmp_path / "me"
    await _register(server, profile)
    posted = await cli(server.url, profile, "post", "global", unique("hi "), "--json")
    assert posted.rc == 0, posted.err
    page = await cli(server.url, profile, "read", "global", "--limit", "200", "--json")
    data = page.json()
    assert data["room"]["id"] == "00000000-0000-0000-0000-000000000001"  # type: ignore[index]
    assert posted.json()["id"] in {m["id"] for m in data["messages"]}  # type: ignore[index]


def _as_in_a_terminal() -> None:
    """The child's SIGINT as a terminal gives it: Ctrl-C interrupts.

    A shell without job control starts a background job (``pytest &``, nohup, CI
    runners) with SIGINT ignored, children inherit that, and ``aicq tail`` rightly
    keeps an inherited ignore (as Python and every Unix tool do), so the test sets
    what it simulates instead of depending on how the suite was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Tail:
    """``aicq tail`` running in the background, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, server: Any, profile: Path, *args: str) -> Tail:
        proc = await asyncio.create_subprocess_exec(
            *cli_command(server.url, profile, ["tail", *args]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
            preexec_fn=_as_in_a_terminal,
        )
        tail = cls(proc)
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), WAIT)
        assert line.startswith(b"tailing "), line
        return tail

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        assert raw, "tail exited"
        return raw.decode().rstrip("\n")

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: returns the exit code and what was left on stderr."""
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(self.proc.communicate(), WAIT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


async def test_tail_shows_what_post_sends_and_exits_cleanly(server: Any, tmp_path: Path) -> None:
    poster, watcher = tmp_path / "poster", tmp_path / "watcher"
    await _register(server, poster)
    name = unique("tail")
    assert (await cli(server.url, poster, "create-room", name)).rc == 0

    tail = await Tail.start(server, watcher, name, "--json")
    try:
        posted = await cli(server.url, poster, "post", name, "over the wire", "--json")
        assert posted.rc == 0, posted.err
        event = orjson.loads(await tail.line())
        assert event["type"] == "message" and event["body"] == "over the wire"
        assert event["id"] == posted.json()["id"]  # type: ignore[index]
    finally:
        rc, err = await tail.interrupt()
    assert rc == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


async def test_tail_human_output(server: Any, tmp_path: Path) -> None:
    poster = tmp_path / "poster"
    await _register(server, poster)
    name = unique("tailh")
    assert (await cli(server.url, poster, "create-room", name)).rc == 0
    tail = await Tail.start(server, tmp_path / "anon", name)
    try:
        assert (await cli(server.url, poster, "post", name, "line\nbreak")).rc == 0
        line = await tail.line()
        assert line.startswith(f"[{name}] ") and "line ⏎ break" in line
    finally:
        rc, _ = await tail.interrupt()
    assert rc == 0


async def test_dm_from_the_cli_decrypts_with_an_independent_implementation(
    server: Any, tmp_path: Path
) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    await _register(server, alice)
    bob_id = await _register(server, bob)

    tail = await Tail.start(server, bob, "--dms", "--json")
    try:
        sent = await cli(server.url, alice, "dm", bob_id, "meet at the usual place ✓", "--json")
        assert sent.rc == 0, sent.err
        live = orjson.loads(await tail.line())
        assert live["type"] == "dm" and live["text"] == "meet at the usual place ✓"
    finally:
        rc, _ = await tail.interrupt()
    assert rc == 0

    inbox = await cli(server.url, bob, "inbox", "--json")
    assert inbox.rc == 0, inbox.err
    [dm] = inbox.json()["messages"]  # type: ignore[index]
    assert dm["text"] == "meet at the usual place ✓" and dm["id"] == sent.json()["id"]  # type: ignore[index]
    assert "meet at the usual place" in (await cli(server.url, bob, "inbox")).out

    # The ciphertext on the server opens with the spec-text implementation.
    creds = Profile(bob).load()
    async with AsyncClient(server.url, creds) as client:
        raw = await client.request("GET", "/dm", signed=True)
    [stored] = raw["messages"]
    seed = creds.private_key.private_bytes_raw()
    assert dm_reference.open_(stored["body"], seed) == "meet at the usual place ✓"


async def test_tail_resumes_by_itself_after_a_restart(
    server: Any, start_server: Any, tmp_path: Path
) -> None:
    poster = tmp_path / "poster"
    await _register(server, poster)
    name = unique("tailr")
    assert (await cli(server.url, poster, "create-room", name)).rc == 0
    own = await asyncio.to_thread(start_server)

    class OwnServer:
        url = own.url

    tail = await Tail.start(OwnServer(), tmp_path / "anon", name, "--json")
    try:
        assert (await cli(server.url, poster, "post", name, "one")).rc == 0
        assert orjson.loads(await tail.line())["body"] == "one"
        await asyncio.to_thread(own.stop)
        for body in ("two", "three"):
            assert (await cli(server.url, poster, "post", name, body)).rc == 0
        await asyncio.to_thread(start_server, port=own.port)
        assert [orjson.loads(await tail.line())["body"] for _ in range(2)] == ["two", "three"]
        assert (await cli(server.url, poster, "post", name, "four")).rc == 0
        assert orjson.loads(await tail.line())["body"] == "four"
    finally:
        rc, err = await tail.interrupt()
    assert rc == 0 and "Traceback" not in err
