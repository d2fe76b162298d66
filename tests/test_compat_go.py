"""Drop-in compatibility with the Redis data the Go server wrote (SPEC §9).

Entries are written straight into this run's Redis exactly as the Go service
stored them, then read back through a real server:

- room messages: members of ``room:{uuid}:messages`` (score = ts), produced by Go's
  ``encoding/json`` from ``{id, room_id, from, body, pid?, ts, sig?}`` — fields in
  that order, ``<``, ``>``, ``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``;
  the id a ULID from ``ulid.Make()``, whose time may be a millisecond off ``ts``;
  no ``room:{uuid}:index`` entry;
- search: ``search:words:{word}`` → ``{room_id}:{msg_id}``, score ts, every lowercase
  ``\\w+`` of three characters or more, private rooms included;
- DMs: ``dm:{uuid}:inbox`` members ``{"id","from","to","body","ts"}``, score ts.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from ulid import ULID
from websockets.asyncio.client import connect

from tests.helpers import new_agent, recv_json, recv_until

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def go_string(text: str) -> str:
    """A JSON string as Go's encoding/json writes it (HTML-safe escaping, UTF-8 kept)."""
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif ord(char) < 0x20 or char in "<>&\u2028\u2029":
            out.append("\\u%04x" % ord(char))
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def go_ulid(ms: int) -> str:
    """What ``ulid.Make()`` gives at unix time ``ms``."""
    return str(ULID.from_bytes(ms.to_bytes(6, "big") + secrets.token_bytes(10)))


def go_words(body: str) -> set[str]:
    return {w for w in re.findall(r"\w+", body.lower(), re.ASCII) if len(w) >= 3}


@dataclass(frozen=True)
class Legacy:
    """A room message as the Go server stored it."""

    room_id: str
    sender: str
    body: str
    ts: int
    skew: int = 1  # ulid.Make() and time.Now() were two calls: the id's ms may differ
    pid: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", go_ulid(self.ts + self.skew))

    def member(self) -> bytes:
        parts = [f'"id":{go_string(self.id)}', f'"room_id":{go_string(self.room_id)}',
                 f'"from":{go_string(self.sender)}', f'"body":{go_string(self.body)}']
        if self.pid:
            parts.append(f'"pid":{go_string(self.pid)}')
        parts.append(f'"ts":{self.ts}')
        parts.append(f'"sig":{go_string(base64.b64encode(secrets.token_bytes(64)).decode())}')
        return ("{" + ",".join(parts) + "}").encode()

    def public(self) -> dict:
        data = {"id": self.id, "from": self.sender, "body": self.body}
        if self.pid:
            data["pid"] = self.pid
        data["ts"] = self.ts
        return data


async def write_legacy(redis: aioredis.Redis, *messages: Legacy) -> None:
    """ZADD each member and index its words, as the Go server's PostMessage did."""
    async with redis.pipeline(transaction=False) as pipe:
        for m in messages:
            pipe.zadd(f"room:{m.room_id}:messages", {m.member(): m.ts})
            for word in go_words(m.body):
                pipe.zadd(f"search:words:{word}", {f"{m.room_id}:{m.id}": m.ts})
        await pipe.execute()


def newest_first(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda m: (m["ts"], m["id"]), reverse=True)


def _ms_ago(minutes: float) -> int:
    return int(time.time() * 1000 - minutes * 60_000)


@pytest.fixture
async def redis(stores: tuple[str, str]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stores[1])
    yield client
    await client.aclose()


async def _subscribe(ws, room: str, ref: str, **extra) -> tuple[list[dict], dict]:
    """Send subscribe; the replayed message frames (in arrival order) and the ok."""
    await ws.send(orjson.dumps({"op": "subscribe", "room": room, "ref": ref, **extra}).decode())
    frames = []
    while True:
        frame = await recv_json(ws)
        if frame.get("ref") == ref:
            assert frame["type"] == "ok", frame
            return frames, frame
        if frame["type"] == "message":
            frames.append(frame)


async def _all_pages(http: httpx.AsyncClient, room: str, limit: int, **headers: str) -> list[dict]:
    """Every message of a room, walking ``before=<id of the last one seen>``."""
    seen: list[dict] = []
    params: dict = {"limit": limit}
    for _ in range(100):
        response = await http.get(f"/room/{room}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["messages"]
        if not page["has_more"]:
            return seen
        params["before"] = page["messages"][-1]["id"]
    raise AssertionError("paging did not end")


async def test_legacy_history_is_read_and_paged_by_legacy_ids(server, http, redis) -> None:
    alice = await new_agent(http, "alice")
    room = (await alice.create_room(http))["id"]
    base = _ms_ago(30)
    legacy = [
        Legacy(room, alice.id, "first <b>bold</b> & \"quoted\" — héllo", base),
        Legacy(room, alice.id, "second\nline\ttab \\ back", base + 1000, skew=-1),
        # Three sharing one millisecond: only the id orders them.
        Legacy(room, alice.id, "tie one", base + 2000, skew=0),
        Legacy(room, alice.id, "tie two", base + 2000, skew=1),
        Legacy(room, alice.id, "tie three", base + 2000, skew=-1),
        Legacy(room, alice.id, "last <script>", base + 3000, skew=2),
    ]
    legacy.append(Legacy(room, alice.id, "a reply", base + 4000, pid=legacy[0].id))
    await write_legacy(redis, *legacy)
    assert await redis.exists(f"room:{room}:index") == 0

    expected = newest_first([m.public() for m in legacy])
    page = (await http.get(f"/room/{room}")).json()
    assert page["messages"] == expected and page["has_more"] is False
    for limit in (1, 2, 3):
        assert await _all_pages(http, room, limit) == expected
    # Each legacy id is an exact cursor: strictly older ones, newest first.
    for index, message in enumerate(expected):
        response = await http.get(f"/room/{room}", params={"before": message["id"], "limit": 200})
        assert response.json()["messages"] == expected[index + 1:], message["body"]


async def test_legacy_dm_is_in_the_inbox(server, http, redis) -> None:
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    old_body = base64.b64encode(secrets.token_bytes(90)).decode()
    old = {"id": go_ulid(_ms_ago(60) + 1), "from": alice.id, "to": bob.id, "body": old_body,
           "ts": _ms_ago(60)}
    member = ('{"id":%s,"from":%s,"to":%s,"body":%s,"ts":%d}' % (
        go_string(old["id"]), go_string(alice.id), go_string(bob.id), go_string(old_body), old["ts"]))
    await redis.zadd(f"dm:{bob.id}:inbox", {member: old["ts"]})
    new_body = base64.b64encode(secrets.token_bytes(80)).decode()
    sent = await alice.request(http, "POST", f"/dm/{bob.id}", {"body": new_body})
    assert sent.status_code == 201, sent.text
    assert sorted(sent.json()) == ["id", "ts"]  # the Go response, nothing more

    inbox = await bob.request(http, "GET", "/dm")
    assert inbox.status_code == 200
    assert inbox.json()["messages"] == [
        {"id": sent.json()["id"], "from": alice.id, "body": new_body, "ts": sent.json()["ts"]},
        {"id": old["id"], "from": alice.id, "body": old_body, "ts": old["ts"]},
    ]


async def test_find_shows_legacy_public_messages_never_private_ones(server, http, redis) -> None:
    alice = await new_agent(http, "alice")
    key = secrets.token_hex(12)
    public = (await alice.create_room(http))["id"]
    private = (await alice.create_room(http, key=key))["id"]
    shared, secret = f"zq{secrets.token_hex(5)}", f"zs{secrets.token_hex(5)}"
    visible = Legacy(public, alice.id, f"public note {shared} here", _ms_ago(20))
    hidden = [
        Legacy(private, alice.id, f"private note {shared} here", _ms_ago(19)),
        Legacy(private, alice.id, f"only {secret} inside", _ms_ago(18)),
    ]
    await write_legacy(redis, visible, *hidden)
    # The Go server indexed private rooms: the refs are there, the server must not show them.
    assert await redis.zscore(f"search:words:{secret}", f"{private}:{hidden[1].id}") is not None

    found = (await http.get("/find", params={"q": shared})).json()
    assert [r["id"] for r in found["results"]] == [visible.id] and found["total"] == 1
    assert found["results"][0] == {"id": visible.id, "room_id": public,
                                   "room_name": found["results"][0]["room_name"],
                                   "from": alice.id, "body": visible.body, "ts": visible.ts}
    assert (await http.get("/find", params={"q": secret})).json()["results"] == []
    in_room = (await http.get("/find", params={"q": f"note {shared}", "room": public})).json()
    assert [r["id"] for r in in_room["results"]] == [visible.id]
    # The private legacy messages themselves are intact, behind the key.
    page = (await http.get(f"/room/{private}", headers={"X-AICQ-Room-Key": key})).json()
    assert page["messages"] == newest_first([m.public() for m in hidden])


async def test_reply_to_and_delete_a_legacy_message(server, http, redis) -> None:
    alice, mallory = await new_agent(http, "alice"), await new_agent(http, "mallory")
    room = (await alice.create_room(http))["id"]
    word = f"zd{secrets.token_hex(5)}"
    parent = Legacy(room, alice.id, f"parent {word} message", _ms_ago(15), skew=-2)
    doomed = Legacy(room, alice.id, f"doomed {word} & gone", _ms_ago(14), skew=1)
    await write_legacy(redis, parent, doomed)

    reply = await mallory.post(http, room, "replying to the old server", pid=parent.id)
    assert reply.status_code == 201, reply.text
    assert (await mallory.post(http, room, "bad parent", pid=go_ulid(_ms_ago(14)))).status_code == 422

    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        await _subscribe(ws, room, "s")
        forbidden = await mallory.request(http, "DELETE", f"/room/{room}/{doomed.id}")
        assert forbidden.status_code == 403, forbidden.text
        deleted = await alice.request(http, "DELETE", f"/room/{room}/{doomed.id}")
        assert deleted.status_code == 204, deleted.text
        event = await recv_until(ws, lambda f: f["type"] == "deleted")
        assert event == {"type": "deleted", "room": room, "id": doomed.id}

    messages = (await http.get(f"/room/{room}")).json()["messages"]
    assert [m["id"] for m in messages] == [reply.json()["id"], parent.id]
    assert messages[0]["pid"] == parent.id
    hits = (await http.get("/find", params={"q": word})).json()["results"]
    assert [h["id"] for h in hits] == [parent.id]
    assert await redis.zscore(f"search:words:{word}", f"{room}:{doomed.id}") is None
    again = await alice.request(http, "DELETE", f"/room/{room}/{doomed.id}")
    assert again.status_code == 404


async def test_ws_since_a_legacy_id_replays_what_follows(server, http, redis) -> None:
    alice = await new_agent(http, "alice")
    room = (await alice.create_room(http))["id"]
    base = _ms_ago(10)
    legacy = [Legacy(room, alice.id, f"old {n}", base + n * 500, skew=(n % 3) - 1) for n in range(5)]
    await write_legacy(redis, *legacy)
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        replayed, ok = await _subscribe(ws, room, "s", since=legacy[1].id)
        assert [f["msg"] for f in replayed] == [m.public() for m in legacy[2:]]
        assert ok["replayed"] == 3 and ok["recovered"] is True
        posted = (await alice.post(http, room, "new after old")).json()
        live = await recv_until(ws, lambda f: f["type"] == "message")
        assert live["msg"]["id"] == posted["id"]


async def test_rolling_switch_mixes_formats_in_ts_id_order(server, http, redis) -> None:
    """While the Go server still writes, new instances write too: one history, one order."""
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    room = (await alice.create_room(http))["id"]
    async with connect(server.ws_url) as live_ws:
        await recv_json(live_ws)
        await _subscribe(live_ws, room, "live")
        first = [(await alice.post(http, room, f"new {n}")).json() for n in range(2)]
        # Go-format writes sharing a millisecond with new ones, ids on either side.
        olds = [Legacy(room, bob.id, "old tie after", first[0]["ts"], skew=1),
                Legacy(room, bob.id, "old tie before", first[1]["ts"], skew=-1),
                Legacy(room, bob.id, "old plain", first[1]["ts"] + 1, skew=0)]
        await write_legacy(redis, *olds)
        later = [(await alice.post(http, room, f"later {n}")).json() for n in range(2)]
        new_ids = [p["id"] for p in first + later]
        live = []
        async with asyncio.timeout(5):
            while len(live) < len(new_ids):
                live.append((await recv_until(live_ws, lambda f: f["type"] == "message"))["msg"]["id"])
        assert live == new_ids  # the Go writes were never published here

    everything = [{"id": p["id"], "ts": p["ts"]} for p in first + later]
    everything += [{"id": m.id, "ts": m.ts} for m in olds]
    order = [m["id"] for m in sorted(everything, key=lambda m: (m["ts"], m["id"]))]
    assert len(set(order)) == 7

    full = (await http.get(f"/room/{room}")).json()["messages"]
    assert [m["id"] for m in full] == order[::-1]
    for limit in (1, 2):
        assert [m["id"] for m in await _all_pages(http, room, limit)] == order[::-1]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        replayed, ok = await _subscribe(ws, room, "all", since=0)
        assert [f["msg"]["id"] for f in replayed] == order and ok["replayed"] == 7
        for index, cursor in enumerate(order):
            replayed, _ = await _subscribe(ws, room, f"s{index}", since=cursor)
            assert [f["msg"]["id"] for f in replayed] == order[index + 1:], cursor
