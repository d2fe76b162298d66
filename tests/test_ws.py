"""WebSocket sessions end to end over real sockets (SPEC §6)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.helpers import Agent, new_agent, recv_json, recv_until


def _send(ws, **frame) -> asyncio.Future:
    return ws.send(orjson.dumps(frame).decode())


async def _subscribe(ws, room: str, ref: str = "sub", **extra) -> dict:
    await _send(ws, op="subscribe", room=room, ref=ref, **extra)
    return await recv_until(ws, lambda f: f.get("ref") == ref)


async def test_hello_then_anonymous_reads_public_room(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    async with connect(server.ws_url) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "hello" and hello["version"] == 1 and hello["agent"] is None
        assert hello["heartbeat"] > 0 and hello["instance"] and hello["session"]
        ok = await _subscribe(ws, room)
        assert ok == {"type": "ok", "ref": "sub", "room": {"id": room, "name": ok["room"]["name"]},
                      "replayed": 0, "recovered": True, "cursor": ok["cursor"]}
        # An empty room stands at a millisecond no later message can precede.
        assert isinstance(ok["cursor"], int) and ok["cursor"] < time.time() * 1000 + 5000
        posted = (await agent.post(http, room, "live!")).json()
        assert posted["ts"] > ok["cursor"]
        event = await recv_json(ws)
        assert event == {"type": "message", "room": room,
                         "msg": {"id": posted["id"], "from": agent.id, "body": "live!", "ts": posted["ts"]}}
        await _send(ws, op="post", room=room, body="anon", ref="p")
        refused = await recv_until(ws, lambda f: f.get("ref") == "p")
        assert refused["type"] == "error" and refused["code"] == 401


async def test_auth_by_headers_and_by_frame(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    async with connect(server.ws_url, additional_headers=agent.headers(b"")) as ws:
        assert (await recv_json(ws))["agent"] == agent.id
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        frame = agent.auth_frame("a1")
        frame["ts"] = int(frame["ts"])  # a number works as well as a string
        await ws.send(orjson.dumps(frame).decode())
        assert await recv_json(ws) == {"type": "ok", "ref": "a1", "agent": agent.id}


async def test_bad_auth_is_closed_with_1008(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        frame = agent.auth_frame("bad")
        frame["sig"] = Agent().auth_frame()["sig"]
        await ws.send(orjson.dumps(frame).decode())
        error = await recv_json(ws)
        assert error["type"] == "error" and error["code"] == 401 and error["ref"] == "bad"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd.code == 1008
    headers = {**agent.headers(b""), "X-AICQ-Timestamp": "1"}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd.code == 1008


async def test_post_dm_delete_and_ping_over_ws(server, http: httpx.AsyncClient) -> None:
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    room = (await alice.create_room(http))["id"]
    async with connect(server.ws_url, additional_headers=alice.headers(b"")) as a_ws, \
            connect(server.ws_url, additional_headers=bob.headers(b"")) as b_ws:
        await recv_json(a_ws), await recv_json(b_ws)
        await _subscribe(b_ws, room)
        await _send(a_ws, op="post", room=room, body="from ws", ref="p1")
        ok = await recv_until(a_ws, lambda f: f.get("ref") == "p1")
        assert ok["type"] == "ok" and ok["id"] and ok["ts"]
        event = await recv_until(b_ws, lambda f: f["type"] == "message")
        assert event["msg"]["id"] == ok["id"] and event["msg"]["from"] == alice.id
        history = (await http.get(f"/room/{room}")).json()["messages"]
        assert history[0]["id"] == ok["id"]

        ciphertext = "A" * 80
        await _send(a_ws, op="dm", to=bob.id, body=ciphertext, ref="d1")
        assert (await recv_until(a_ws, lambda f: f.get("ref") == "d1"))["type"] == "ok"
        dm = await recv_until(b_ws, lambda f: f["type"] == "dm")
        assert dm["msg"]["from"] == alice.id and dm["msg"]["body"] == ciphertext

        await _send(a_ws, op="delete", room=room, id=ok["id"], ref="x1")
        assert (await recv_until(a_ws, lambda f: f.get("ref") == "x1"))["type"] == "ok"
        gone = await recv_until(b_ws, lambda f: f["type"] == "deleted")
        assert gone == {"type": "deleted", "room": room, "id": ok["id"]}

        await _send(b_ws, op="ping", ref=99)
        pong = await recv_until(b_ws, lambda f: f["type"] == "pong")
        assert pong["ref"] == 99 and pong["server_time"] > 0


async def test_errors_never_kill_the_session(server, http: httpx.AsyncClient) -> None:
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        for frame, code in [("not json", 400), ('{"op": "nope", "ref": 1}', 400),
                            ('{"op": "subscribe", "room": 5}', 400),
                            ('{"op": "subscribe", "room": "no-such-room-zz"}', 404),
                            ('{"op": "subscribe", "room": "global", "since": "later"}', 400),
                            ('{"op": "dm", "to": "x", "body": "y"}', 401)]:
            await ws.send(frame)
            error = await recv_json(ws)
            assert error["type"] == "error" and error["code"] == code, frame
        await ws.send(b"\x00binary")
        assert (await recv_json(ws))["code"] == 400
        await _send(ws, op="ping", ref="alive")
        assert (await recv_json(ws))["type"] == "pong"


async def test_oversize_frame_closes_1009(server) -> None:
    async with connect(server.ws_url, max_size=None) as ws:
        await recv_json(ws)
        await ws.send("x" * (16 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws)
        assert closed.value.rcvd.code == 1009


async def test_private_room_needs_key_over_ws(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key = secrets.token_hex(10)
    room = (await agent.create_room(http, key=key))["id"]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        assert (await _subscribe(ws, room, ref="nokey"))["code"] == 403
        assert (await _subscribe(ws, room, ref="key", key=key))["type"] == "ok"


async def test_subscription_limit(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    rooms = [(await agent.create_room(http))["id"] for _ in range(101)]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        for index, room in enumerate(rooms[:100]):
            assert (await _subscribe(ws, room, ref=f"s{index}"))["type"] == "ok"
        refused = await _subscribe(ws, rooms[100], ref="s100")
        assert refused["type"] == "error" and refused["code"] == 400
        await _send(ws, op="unsubscribe", room=rooms[0], ref="u")
        assert (await recv_until(ws, lambda f: f.get("ref") == "u"))["type"] == "ok"
        assert (await _subscribe(ws, rooms[100], ref="again"))["type"] == "ok"


async def test_since_replays_by_id_and_by_ms(server, http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    posted = [(await agent.post(http, room, f"m{i}")).json() for i in range(6)]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        await _send(ws, op="subscribe", room=room, since=posted[2]["id"], ref="s")
        frames = [await recv_json(ws) for _ in range(4)]
        assert [f["msg"]["id"] for f in frames[:3]] == [p["id"] for p in posted[3:]]
        assert frames[3] == {**frames[3], "type": "ok", "replayed": 3, "recovered": True}
        await _send(ws, op="subscribe", room=room, since=posted[0]["ts"] - 1, ref="ms")
        frames = [await recv_json(ws) for _ in range(7)]
        assert [f["msg"]["id"] for f in frames[:6]] == [p["id"] for p in posted]
        assert frames[6]["replayed"] == 6


async def _collect(ws, room: str, want: set[str], timeout: float = 10) -> list[str]:
    got: list[str] = []

    async def run() -> None:
        while not want.issubset(got):
            frame = await recv_json(ws, timeout)
            if frame["type"] == "message" and frame["room"] == room:
                got.append(frame["msg"]["id"])

    await asyncio.wait_for(run(), timeout)
    return got


@pytest.mark.parametrize("round_", range(3))
async def test_resume_under_concurrent_publishing_has_no_gap_or_duplicate(server, http, round_) -> None:
    publisher = await new_agent(http)
    room = (await publisher.create_room(http))["id"]
    posted: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        while not stop.is_set():
            posted.append((await publisher.post(http, room, f"n{len(posted)}")).json()["id"])

    task = asyncio.create_task(publish())
    try:
        received: list[str] = []
        since = None
        for _ in range(4):  # connect, read a little, drop, resume
            async with connect(server.ws_url) as ws:
                await recv_json(ws)
                await _send(ws, op="subscribe", room=room, ref="s", **({"since": since} if since else {"since": 0}))
                count = 0
                while count < 15:
                    frame = await recv_json(ws)
                    if frame["type"] == "message":
                        received.append(frame["msg"]["id"])
                        count += 1
                since = received[-1]
        stop.set()
        await task
        async with connect(server.ws_url) as ws:
            await recv_json(ws)
            await _send(ws, op="subscribe", room=room, since=since, ref="final")
            rest = await _collect(ws, room, set(posted) - set(received))
        received += rest
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    assert len(received) == len(set(received)), "duplicate delivery"
    assert received == posted, "order or completeness differs from history"


async def test_cross_instance_fanout_and_dms(start_server, server, http) -> None:
    other = start_server()
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    room = (await alice.create_room(http))["id"]
    async with httpx.AsyncClient(base_url=other.url) as http_b, \
            connect(other.ws_url) as on_b, \
            connect(server.ws_url, additional_headers=bob.headers(b"")) as bob_on_a:
        await recv_json(on_b), await recv_json(bob_on_a)
        await _subscribe(on_b, room)
        posted = (await alice.post(http, room, "from A")).json()  # posted on A
        assert (await recv_until(on_b, lambda f: f["type"] == "message"))["msg"]["id"] == posted["id"]
        dm = await alice.request(http_b, "POST", f"/dm/{bob.id}", {"body": "B" * 88})  # sent via B
        assert dm.status_code == 201
        event = await recv_until(bob_on_a, lambda f: f["type"] == "dm")
        assert event["msg"]["id"] == dm.json()["id"]


async def test_sigterm_closes_sessions_with_1012_and_exits(start_server) -> None:
    doomed = start_server()
    async with connect(doomed.ws_url) as ws:
        await recv_json(ws)
        stopping = asyncio.get_running_loop().run_in_executor(None, doomed.stop, signal.SIGTERM, 30)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_json(ws, timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert await asyncio.wait_for(stopping, 35) == 0


async def test_live_order_is_ts_id_order_across_instances(start_server, server, http) -> None:
    """Ids and timestamps come from the script that publishes, so concurrent posts on two
    instances reach subscribers in exactly their (ts, id) order, the order of history."""
    other = start_server()
    agents = [await new_agent(http) for _ in range(4)]
    room = (await agents[0].create_room(http))["id"]
    async with httpx.AsyncClient(base_url=other.url) as http_b, connect(server.ws_url) as ws:
        await recv_json(ws)
        await _subscribe(ws, room)

        async def burst(agent, client) -> list[str]:
            return [(await agent.post(client, room, f"b{i}")).json()["id"] for i in range(25)]

        posted = await asyncio.gather(*[burst(a, http if i % 2 else http_b) for i, a in enumerate(agents)])
        want = {message_id for ids in posted for message_id in ids}
        live = []
        while len(live) < len(want):
            frame = await recv_json(ws)
            if frame["type"] == "message":
                live.append((frame["msg"]["ts"], frame["msg"]["id"]))
    assert live == sorted(live) and len(set(live)) == len(live) == 100
    history = (await http.get(f"/room/{room}", params={"limit": 200})).json()["messages"]
    assert [(m["ts"], m["id"]) for m in reversed(history)] == live


@pytest.mark.parametrize("history", [0, 2], ids=["empty-room", "room-with-history"])
async def test_subscribe_cursor_resumes_a_quiet_room_without_loss(server, http: httpx.AsyncClient,
                                                                 history: int) -> None:
    """Issue 12.5: the ``cursor`` of a live-only subscribe is a resume point that
    misses nothing posted after it and repeats nothing posted before it."""
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    old = [(await agent.post(http, room, f"old {i}")).json()["id"] for i in range(history)]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        ok = await _subscribe(ws, room)
    assert ok["cursor"] == (old[-1] if old else ok["cursor"])
    missed = [(await agent.post(http, room, f"while away {i}")).json()["id"] for i in range(3)]
    async with connect(server.ws_url) as ws:
        await recv_json(ws)
        await _send(ws, op="subscribe", room=room, ref="again", since=ok["cursor"])
        replayed = []
        while (frame := await recv_json(ws))["type"] == "message":
            replayed.append(frame["msg"]["id"])
        assert frame["type"] == "ok" and frame["replayed"] == 3 and frame["recovered"] is True
        assert frame["cursor"] == missed[-1]
    assert replayed == missed
