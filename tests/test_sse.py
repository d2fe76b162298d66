"""GET /events end to end: real servers, real HTTP streams (httpx), real stores."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import socket
import time
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import Agent, new_agent, random_ip
from tests.sse_support import caught_up, ready, sse


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_live_events_are_the_websocket_events(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = await agent.create_room(http)
    started = int(time.time() * 1000)
    async with sse(http, f"/events?rooms={room['name']}") as reader:
        hello = await ready(reader)
        assert hello.data == {"type": "ready", "rooms": [{"id": room["id"], "name": room["name"]}],
                              "dms": False, "replayed": 0, "recovered": True,
                              "heartbeat": hello.data["heartbeat"], "instance": hello.data["instance"]}
        # A fresh stream's cursor is its start (a little before): a reconnect misses nothing.
        assert hello.id is not None and started - 5000 < int(hello.id) <= started
        assert reader.retry is not None and 1000 <= reader.retry <= 3000
        posted = (await agent.post(http, room["id"], "live!")).json()
        event = await reader.next()
        assert (event.event, event.id) == ("message", posted["id"])
        assert event.data == {"type": "message", "room": room["id"],
                              "msg": {"id": posted["id"], "from": agent.id, "body": "live!", "ts": posted["ts"]}}
        response = await agent.request(http, "DELETE", f"/room/{room['id']}/{posted['id']}")
        assert response.status_code == 204
        deleted = await reader.next()
        assert deleted.event == "deleted" and deleted.data == {"type": "deleted", "room": room["id"],
                                                               "id": posted["id"]}
        # A deletion does not move the cursor: it carries no id of its own.
        assert deleted.id is None and deleted.last_id == posted["id"]
    assert reader.response.headers["cache-control"] == "no-cache"


async def test_last_event_id_resumes_exactly_after_what_was_seen(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    async with sse(http, f"/events?rooms={room}") as reader:
        await ready(reader)
        for body in ("one", "two"):
            await agent.post(http, room, body)
        seen = await reader.messages(2)
    missed = [(await agent.post(http, room, f"missed {i}")).json()["id"] for i in range(3)]
    async with sse(http, f"/events?rooms={room}", {"Last-Event-ID": seen[-1].last_id}) as reader:
        replay = await reader.messages(3)
        assert [e.id for e in replay] == missed
        hello = await ready(reader)
        assert hello.data["replayed"] == 3 and hello.data["recovered"] is True and hello.id is None
        live = (await agent.post(http, room, "live")).json()["id"]
        assert (await reader.next()).id == live


async def test_since_and_an_expired_cursor(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    first = (await agent.post(http, room, "first")).json()
    second = (await agent.post(http, room, "second")).json()
    async with sse(http, f"/events?rooms={room}&since={first['id']}") as reader:
        assert [e.id for e in await reader.messages(1)] == [second["id"]]
        assert (await ready(reader)).data["replayed"] == 1
    # Last-Event-ID (a reconnecting EventSource's) wins over the since in its URL.
    async with sse(http, f"/events?rooms={room}&since={first['id']}", {"Last-Event-ID": second["id"]}) as reader:
        assert (await ready(reader)).data["replayed"] == 0
    async with sse(http, f"/events?rooms={room}&since={first['ts'] - 1}") as reader:
        assert [e.id for e in await reader.messages(2)] == [first["id"], second["id"]]
    # Older than history reaches back: the client is told it may have missed some.
    async with sse(http, f"/events?rooms={room}&since=1") as reader:
        hello = await ready(reader)
        assert hello.data["recovered"] is False and hello.data["replayed"] == 2


async def test_several_rooms_resume_exactly_from_any_event(http: httpx.AsyncClient) -> None:
    """Every prefix of a multi-room stream, resumed from its last id, gives exactly the rest."""
    agent = await new_agent(http)
    rooms = [(await agent.create_room(http))["id"] for _ in range(3)]
    start = int(time.time() * 1000) - 1
    # Concurrent posts to several rooms: some share a millisecond across rooms.
    posted: list[str] = []
    for burst in range(4):
        results = await asyncio.gather(*[agent.post(http, rooms[i % 3], f"b{burst} m{i}") for i in range(15)])
        posted += [r.json()["id"] for r in results]
    assert len(set(posted)) == len(posted), "message ids are unique across rooms: the cursor relies on it"
    path = f"/events?rooms={','.join(rooms)}"
    async with sse(http, f"{path}&since={start}") as reader:
        stream = await reader.messages(len(posted))
        assert (await ready(reader)).data["replayed"] == len(posted)
    keys = [(e.data["msg"]["ts"], e.data["msg"]["id"]) for e in stream]
    assert keys == sorted(keys) and sorted(e.data["msg"]["id"] for e in stream) == sorted(posted)
    for cut in range(0, len(stream), 3):
        cursor = stream[cut].last_id
        assert cursor is not None
        async with sse(http, path, {"Last-Event-ID": cursor}) as reader:
            replay, hello = await caught_up(reader)
        assert [e.data["msg"]["id"] for e in replay] == [e.data["msg"]["id"] for e in stream[cut + 1:]], \
            (cut, cursor)
        assert hello.data["replayed"] == len(replay)


async def test_live_events_of_several_rooms_resume_without_loss_or_repeat(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    rooms = [(await agent.create_room(http))["id"] for _ in range(3)]
    path = f"/events?rooms={','.join(rooms)}"
    async with sse(http, path) as reader:
        await ready(reader)
        posted: list[str] = []
        for burst in range(3):
            results = await asyncio.gather(*[agent.post(http, rooms[i % 3], f"b{burst} m{i}") for i in range(12)])
            posted += [r.json()["id"] for r in results]
        live = await reader.messages(len(posted))
    assert sorted(e.data["msg"]["id"] for e in live) == sorted(posted)
    for room in rooms:  # each room in its own order
        mine = [(e.data["msg"]["ts"], e.data["msg"]["id"]) for e in live if e.data["room"] == room]
        assert mine == sorted(mine)
    for cut in range(0, len(live), 4):
        async with sse(http, path, {"Last-Event-ID": live[cut].last_id}) as reader:
            replay, _ = await caught_up(reader)
        assert {e.data["msg"]["id"] for e in replay} == {e.data["msg"]["id"] for e in live[cut + 1:]}, \
            (cut, live[cut].last_id)
        assert len(replay) == len(live) - cut - 1


async def test_dms_need_a_signed_request_and_resume(http: httpx.AsyncClient) -> None:
    me, friend = await new_agent(http), await new_agent(http)
    response = await http.get("/events?dms=1")
    assert response.status_code == 401 and "signed" in response.json()["error"]
    stale = me.headers(b"", ts=int(time.time() * 1000) - 60_000)
    response = await http.get("/events?dms=1", headers=stale)
    assert response.status_code == 401 and "timestamp" in response.json()["error"]
    body = base64.b64encode(os.urandom(80)).decode()
    async with sse(http, "/events?dms=1", me.headers(b"")) as reader:
        assert (await ready(reader)).data["dms"] is True
        sent = (await friend.request(http, "POST", f"/dm/{me.id}", {"body": body})).json()
        event = await reader.next()
        assert event.event == "dm" and event.id == sent["id"]
        assert event.data == {"type": "dm", "msg": {"id": sent["id"], "from": friend.id, "body": body,
                                                    "ts": sent["ts"]}}
    later = [(await friend.request(http, "POST", f"/dm/{me.id}", {"body": body})).json()["id"] for _ in range(2)]
    async with sse(http, "/events?dms=1", {**me.headers(b""), "Last-Event-ID": event.last_id}) as reader:
        replayed = [await reader.until(lambda e: e.event == "dm") for _ in range(2)]
        assert [e.data["msg"]["id"] for e in replayed] == later
        assert (await ready(reader)).data["replayed"] == 2


async def test_private_rooms_need_their_keys(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key_a, key_b = "secret, with=commas " + secrets.token_hex(4), "plain-" + secrets.token_hex(8)
    a = (await agent.create_room(http, key=key_a))["id"]
    b = (await agent.create_room(http, key=key_b))["id"]
    assert (await http.get(f"/events?rooms={a}")).status_code == 403
    assert (await http.get(f"/events?rooms={a}", headers={"X-AICQ-Room-Key": "wrong key, long enough"})
            ).status_code == 403
    async with sse(http, f"/events?rooms={a}", {"X-AICQ-Room-Key": key_a}) as reader:  # one room: as is
        await ready(reader)
    pairs = f"{a}={quote(key_a, safe='')}, {b}={quote(key_b, safe='')}"
    async with sse(http, f"/events?rooms={a},{b}", {"X-AICQ-Room-Key": pairs}) as reader:
        assert len((await ready(reader)).data["rooms"]) == 2
        posted = (await agent.request(http, "POST", f"/room/{b}", {"body": "psst"},
                                      headers={"X-AICQ-Room-Key": key_b})).json()
        assert (await reader.next()).id == posted["id"]
    # One header per room works as well.
    headers = [("X-AICQ-Room-Key", f"{a}={quote(key_a, safe='')}"), ("X-AICQ-Room-Key", f"{b}={key_b}")]
    response = await http.head(f"/events?rooms={a},{b}", headers=headers)
    assert response.status_code == 200 and response.content == b""
    # A missing pair is refused naming the room (the first one without its key).
    for header, lacking in ((f"{a}={quote(key_a, safe='')}", b), ("one-key-for-both-rooms", a),
                            (f"global={key_b}", a)):
        refused = await http.get(f"/events?rooms={a},{b}", headers={"X-AICQ-Room-Key": header})
        assert refused.status_code == 403, header
        assert refused.json()["error"] == f"this room is private: X-AICQ-Room-Key needs {lacking}=<key>"
    wrong = await http.get(f"/events?rooms={a},{b}", headers={"X-AICQ-Room-Key": f"{a}=nope-nope-nope-nope, {b}={key_b}"})
    assert wrong.status_code == 403 and wrong.json()["error"] == f"invalid room key: {a}"


@pytest.mark.parametrize(("query", "headers", "status", "says"), [
    ("rooms=no-such-room-here", {}, 404, "room not found: no-such-room-here"),
    ("rooms=" + ",".join(f"r{i}" for i in range(101)), {}, 400, "at most 100 rooms"),
    ("rooms=global", {"Last-Event-ID": "not a cursor"}, 400, "Last-Event-ID must be"),
    ("rooms=global", {"Last-Event-ID": "01ARZ3NDEKTSV4RRFFQ69G5FAV,nope"}, 400, "Last-Event-ID must be"),
    ("rooms=global", {"Last-Event-ID": ",".join(["01ARZ3NDEKTSV4RRFFQ69G5FAV"] * 101)}, 400, "at most 100"),
    ("rooms=global&since=yesterday", {}, 400, "since must be"),
    ("rooms=global&since=-5", {}, 400, "since must be"),
    ("rooms=global&dms=maybe", {}, 400, "dms must be"),
    ("", {}, 400, "name at least one room"),
    ("rooms=,,,", {}, 400, "name at least one room"),
    ("rooms=global&dms=TRUE", {}, 400, "dms must be"),
    ("rooms=global&since=nope", {"Last-Event-ID": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}, 400, "since must be"),
    ("rooms=%20global", {}, 404, "room not found:  global"),
])
async def test_hostile_requests_get_clear_errors(http: httpx.AsyncClient, query: str, headers: dict,
                                                 status: int, says: str) -> None:
    response = await http.get(f"/events?{query}", headers=headers)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


async def test_a_reader_on_one_instance_gets_what_is_posted_on_another(start_server, http) -> None:
    other = start_server()
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    async with httpx.AsyncClient(base_url=other.url, timeout=10) as elsewhere, \
            sse(elsewhere, f"/events?rooms={room}") as reader:
        hello = await ready(reader)
        posted = (await agent.post(http, room, "across")).json()
        assert (await reader.next()).id == posted["id"]
    assert hello.data["instance"] != (await http.get("/health")).json()["instance"]
    other.stop()


async def test_sigterm_ends_streams_and_the_resume_elsewhere_misses_and_repeats_nothing(
        start_server, http: httpx.AsyncClient) -> None:
    doomed = start_server()
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    posted: list[str] = []
    stop = asyncio.Event()

    async def poster() -> None:  # posts through the instance that stays
        while not stop.is_set():
            posted.append((await agent.post(http, room, f"n{len(posted)}")).json()["id"])
            await asyncio.sleep(0.02)

    received: list[str] = []
    task = asyncio.create_task(asyncio.sleep(0))
    try:
        async with httpx.AsyncClient(base_url=doomed.url, timeout=10) as there, \
                sse(there, f"/events?rooms={room}") as reader:
            hello = await ready(reader)
            task = asyncio.create_task(poster())
            while len(received) < 10:
                received.append((await reader.next()).id)
            stopping = time.monotonic()
            killer = asyncio.get_running_loop().run_in_executor(None, doomed.stop)
            await reader.end(timeout=10)
            ended_after = time.monotonic() - stopping
            while not reader.events.empty():
                event = reader.events.get_nowait()
                if event is not None and event.event == "message":
                    received.append(event.id)
            assert any("restarting" in c for c in reader.comments), reader.comments
            assert await killer == 0
        cursor = received[-1] if received else hello.id
        async with sse(http, f"/events?rooms={room}", {"Last-Event-ID": cursor}) as reader:
            await asyncio.sleep(0.3)
            stop.set()
            await task
            while len(received) < len(posted):
                received.append((await reader.until(lambda e: e.event == "message")).id)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert ended_after < 5, f"the stream outlived SIGTERM by {ended_after:.1f}s"
    assert received == posted


def _stalled_reader(port: int, room: str) -> socket.socket:
    """GET /events, then never read again (a tiny receive buffer fills fast)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /events?rooms={room} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"ready" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def test_a_reader_that_never_reads_is_dropped_and_others_keep_up(start_server) -> None:
    server = start_server(WS_QUEUE_BYTES="65536", SSE_HEARTBEAT="1")
    before = _metric(server.url, "aicq_sse_slow_disconnects_total")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        agent = await new_agent(http)
        room = (await agent.create_room(http))["id"]
        stalled = _stalled_reader(server.port, room)
        async with sse(http, f"/events?rooms={room}") as healthy:
            await ready(healthy)
            await asyncio.wait_for(_until(lambda: "ping" in healthy.comments), 5)  # a comment each second
            body = "x" * 4000
            posted = 0
            dropped = False
            for _batch in range(200):  # at most 8 MB: far beyond the 64 KiB bound plus kernel buffers
                results = await asyncio.gather(*[agent.post(http, room, f"{posted + i:05d}{body}")
                                                 for i in range(10)])
                assert all(r.status_code == 201 for r in results)
                posted += 10
                if _metric(server.url, "aicq_sse_slow_disconnects_total") >= before + 1:
                    dropped = True
                    break
            assert dropped, "the stalled reader was never dropped"
            got = await healthy.messages(posted, timeout=20)
            assert sorted(int(e.data["msg"]["body"][:5]) for e in got) == list(range(posted))
        stalled.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError, OSError)):
            while stalled.recv(65536):  # the server dropped it: the socket ends
                pass
            raise ConnectionResetError("closed")
        stalled.close()
    server.stop()


async def _until(predicate, step: float = 0.05) -> None:
    """Poll what only the server can tell (its metrics, a reader's comments)."""
    while not predicate():  # noqa: ASYNC110
        await asyncio.sleep(step)


async def test_resuming_streams_spend_the_read_budget(limited_server) -> None:
    ip = random_ip()
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=10,
                                 headers={"X-Test-Client-IP": ip}) as http:
        agent = Agent()
        agent.id = (await http.post("/register", json={"public_key": agent.public_key})).json()["id"]
        rooms = [(await agent.create_room(http))["id"] for _ in range(3)]
        path = f"/events?rooms={','.join(rooms)}"
        async with sse(http, path) as reader:  # live only: no budget spent
            await ready(reader)
            assert "x-ratelimit-remaining" not in reader.response.headers
        async with sse(http, path + "&since=1") as reader:  # a resume: one read_room per room
            await ready(reader)
            assert reader.response.headers["x-ratelimit-remaining"] == "117"
        for _ in range(39):
            async with sse(http, path + "&since=1") as reader:
                await ready(reader)
        refused = await http.get(path + "&since=1")
        assert refused.status_code == 429 and refused.json() == {"error": "rate limit exceeded"}
        assert int(refused.headers["retry-after"]) > 0


async def test_reader_helper_sees_the_stream_end(server) -> None:
    """The stream ends only by the server's doing: a client closing it frees its listener."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        before = _metric(server.url, "aicq_sse_streams")
        async with sse(http, "/events?rooms=global") as reader:
            await ready(reader)
            assert _metric(server.url, "aicq_sse_streams") == before + 1
        await asyncio.wait_for(_until(lambda: _metric(server.url, "aicq_sse_streams") == before), 5)



async def test_event_streams_share_the_per_client_session_cap(start_server) -> None:
    """A stream is a live session like a WebSocket: MAX_SESSIONS_PER_IP holds for both."""
    server = start_server(CLIENT_IP_HEADER="X-Test-Client-IP", RATE_LIMIT_WHITELIST="", MAX_SESSIONS_PER_IP="2")
    client = {"X-Test-Client-IP": random_ip()}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            async with sse(http, "/events?rooms=global", client) as first, \
                    sse(http, "/events?rooms=global", client) as second:
                await ready(first)
                await ready(second)
                refused = await http.get("/events?rooms=global", headers=client)
                assert refused.status_code == 429 and refused.headers["retry-after"]
                other = {"X-Test-Client-IP": random_ip()}
                async with sse(http, "/events?rooms=global", other) as bystander:
                    await ready(bystander)
            # The slots come back once the server has noticed both streams closed: a
            # client that reconnects retries its 429 (Retry-After), and so does this one.
            deadline = time.monotonic() + 10
            while True:
                async with http.stream("GET", "/events?rooms=global", headers=client) as again:
                    if again.status_code == 200:
                        break
                    assert again.status_code == 429 and time.monotonic() < deadline, again.status_code
                await asyncio.sleep(0.02)
    finally:
        server.stop()
