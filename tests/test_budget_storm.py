"""Our own clients never come near a block; abuse still does (issue 12.3).

The viewer is simulated: ``SimViewer`` sends what one tab of ``web/static/app.js`` and
``live.js`` sends for the "all rooms" view (the REST reads, the ping for the server's
clock, one subscribe per room with its cursor, a /who per author shown; after a
reconnect, every room again from its cursor, and the room list), so ten of them fit
in one test. The rolling deploy is real: the viewers' server is stopped (1012) and
started again while another instance keeps taking posts. Figures print with -s.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aicq.client import AsyncClient
from aicq.client.stream import Stream
from tests.helpers import new_agent, random_ip, recv_json, recv_until
from tests.resilience.fuzz_support import figures, metric  # noqa: F401 - figures is a fixture

VIEWERS = 10
ROOMS = 64
MAX_ROOMS = 100  # app.js: the rooms the "all" view follows
HISTORY_ROOMS = 4  # app.js ALL_HISTORY_ROOMS
HISTORY = 25  # app.js ALL_HISTORY


@pytest.fixture
async def redis(stores) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stores[1])
    yield client
    await client.aclose()


@dataclass
class Tally:
    """Everything the viewers behind one address were answered."""

    statuses: Counter = field(default_factory=Counter)  # "GET /room 200", "ws subscribe 429", ...

    @property
    def refused(self) -> int:
        return sum(n for what, n in self.statuses.items() if what.endswith(" 429"))


@dataclass
class SimViewer:
    base_url: str
    ws_url: str
    ip: str
    tally: Tally
    cursors: dict[str, str] = field(default_factory=dict)  # room id -> since (message id or ms)
    rooms: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    ws: ClientConnection | None = None
    reader: asyncio.Task | None = None
    waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    refs: Any = field(default_factory=lambda: itertools.count(1))

    async def get(self, http: httpx.AsyncClient, path: str, **params: Any) -> Any:
        response = await http.get(path, params=params)
        self.tally.statuses[f"GET /{path.split('/')[1]} {response.status_code}"] += 1
        return response.json() if response.status_code == 200 else None

    async def load(self) -> None:
        """A page load of the "all rooms" view (app.js: live.start, loadRooms, showView)."""
        await self.close()
        self.cursors.clear()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=20,
                                     headers={"X-Test-Client-IP": self.ip}) as http:
            await self.open_socket()
            listing, _ = await asyncio.gather(self.get(http, "/channels", limit=MAX_ROOMS), self.get(http, "/stats"))
            self.rooms = [c["id"] for c in listing["channels"]][:MAX_ROOMS]
            pages = await asyncio.gather(*[self.get(http, f"/room/{room}", limit=HISTORY)
                                           for room in self.rooms[:HISTORY_ROOMS]])
            authors = set()
            for room, page in zip(self.rooms, pages, strict=False):
                if page and page["messages"]:
                    self.cursors[room] = page["messages"][0]["id"]  # newest first
                    authors |= {m["from"] for m in page["messages"]}
            now = (await self.ask({"op": "ping"}))["server_time"]
            for room in self.rooms:
                self.cursors.setdefault(room, str(now - 1))
            await self.subscribe_all()
            await asyncio.gather(*[self.get(http, f"/who/{author}") for author in authors])

    async def reconnect(self, deadline: float = 30) -> None:
        """After the server went away: back again, every room from its cursor, the room list."""
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        while True:
            try:
                await self.open_socket()
                break
            except OSError:
                assert loop.time() < until, "the server did not come back"
                await asyncio.sleep(0.2)
        await self.subscribe_all()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=20,
                                     headers={"X-Test-Client-IP": self.ip}) as http:
            await asyncio.gather(self.get(http, "/channels", limit=MAX_ROOMS), self.get(http, "/stats"))

    async def open_socket(self) -> None:
        self.ws = await connect(self.ws_url, additional_headers={"X-Test-Client-IP": self.ip})
        assert (await recv_json(self.ws))["type"] == "hello"
        self.reader = asyncio.create_task(self.read(self.ws))

    async def subscribe_all(self) -> None:
        answers = await asyncio.gather(*[
            self.ask({"op": "subscribe", "room": room, "since": self.cursors[room]}) for room in self.rooms])
        for answer in answers:
            self.tally.statuses[f"ws subscribe {200 if answer['type'] == 'ok' else answer['code']}"] += 1

    async def ask(self, op: dict) -> dict:
        ref = f"r{next(self.refs)}"
        self.waiting[ref] = asyncio.get_running_loop().create_future()
        assert self.ws is not None
        await self.ws.send(orjson.dumps({**op, "ref": ref}).decode())
        return await asyncio.wait_for(self.waiting[ref], 20)

    async def read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "message":
                    self.cursors[frame["room"]] = frame["msg"]["id"]
                    self.seen.add(frame["msg"]["id"])
                elif frame.get("ref") in self.waiting:
                    self.waiting.pop(frame["ref"]).set_result(frame)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


@pytest.fixture
def deploy_server(start_server):
    server = start_server(RATE_LIMIT_WHITELIST="", CLIENT_IP_HEADER="X-Test-Client-IP")
    yield server
    server.stop()


async def test_ten_viewers_behind_one_address_and_two_rolling_restarts(
    deploy_server, server, http, redis, figures  # noqa: F811
) -> None:
    # 64 fresh public rooms with a little history, the most active of all: the viewers'
    # "all" view shows them first. Posts go through `server` (whitelisted), which keeps
    # running while the viewers' instance restarts.
    authors = [await new_agent(http, f"author-{i}") for i in range(3)]
    rooms = [(await authors[0].create_room(http))["id"] for _ in range(ROOMS)]
    for n, room in enumerate(rooms):
        assert (await authors[n % 3].post(http, room, f"hello {n}")).status_code == 201

    nat, tally = random_ip(), Tally()
    viewers = [SimViewer(deploy_server.url, deploy_server.ws_url, nat, tally) for _ in range(VIEWERS)]
    spent: dict[str, int] = {}

    async def reads() -> int:
        return await redis.zcard(f"ratelimit:ip:{nat}:read_room:60")

    for load in (1, 2):  # everyone opens the page, then reloads it
        await asyncio.gather(*[viewer.load() for viewer in viewers])
        spent[f"page load {load}"] = await reads()
    missed: list[str] = []
    for restart in (1, 2):  # a rolling deploy: the instance goes away and comes back
        await asyncio.to_thread(deploy_server.stop)
        for n, room in enumerate(rooms[:20]):
            posted = await authors[n % 3].post(http, room, f"while restarting {restart}")
            missed.append(posted.json()["id"])
        await asyncio.to_thread(deploy_server.start)
        await asyncio.gather(*[viewer.reconnect() for viewer in viewers])
        spent[f"reconnect storm {restart}"] = await reads()
    for viewer in viewers:
        await viewer.close()

    violations = int(await redis.get(f"violations:ip:{nat}") or 0)
    blocked = bool(await redis.exists(f"blocked:ip:{nat}"))
    figures("10 viewers behind one address, 2 loads, 2 rolling restarts", {
        "rooms followed per viewer": len(viewers[0].rooms),
        "read_room spent (cumulative, of 120/min)": spent,
        "answers": dict(sorted(tally.statuses.items())),
        "429s": tally.refused, "violations": violations, "blocked": blocked,
    })
    assert tally.refused == 0 and violations == 0 and not blocked
    # A page load costs its REST history reads and nothing for its 100 subscribes; a
    # reconnect that replays 20 missed messages costs one read per viewer, not 20.
    assert spent["page load 1"] == spent["page load 2"] - spent["page load 1"] == VIEWERS * HISTORY_ROOMS
    assert spent["reconnect storm 1"] - spent["page load 2"] == VIEWERS
    assert spent["reconnect storm 2"] - spent["reconnect storm 1"] == VIEWERS
    for viewer in viewers:  # and nothing was missed: every post made during the restarts arrived
        assert set(missed) <= viewer.seen


async def test_a_replay_costs_one_read_per_200_messages_sent(limited_server, server, http, redis) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    first = (await agent.post(http, room, "the cursor")).json()["id"]
    ip = random_ip()

    async def subscribe(ws: ClientConnection, since: str, ref: str) -> dict:
        await ws.send(orjson.dumps({"op": "subscribe", "room": room, "since": since, "ref": ref}).decode())
        return await recv_until(ws, lambda f: f.get("ref") == ref, timeout=20)

    async with connect(limited_server.ws_url, additional_headers={"X-Test-Client-IP": ip}) as ws:
        await recv_json(ws)
        current = await subscribe(ws, first, "current")
        assert current["replayed"] == 0
        assert await redis.zcard(f"ratelimit:ip:{ip}:read_room:60") == 0  # nothing sent, nothing spent
        await asyncio.gather(*[agent.post(http, room, f"m{i}") for i in range(250)])
        behind = await subscribe(ws, first, "behind")
        assert behind["replayed"] == 250
        assert await redis.zcard(f"ratelimit:ip:{ip}:read_room:60") == 2  # 250 messages: two reads' worth
        again = await subscribe(ws, "0", "again")  # the 150 left over pay for part of this one
        assert again["replayed"] == 251
        assert await redis.zcard(f"ratelimit:ip:{ip}:read_room:60") == 3


async def test_an_abusive_replayer_is_still_blocked(limited_server, server, http, redis) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    await asyncio.gather(*[agent.post(http, room, f"m{i}") for i in range(200)])
    ip = random_ip()
    codes: Counter = Counter()
    async with connect(limited_server.ws_url, additional_headers={"X-Test-Client-IP": ip},
                       max_queue=None) as ws:
        await recv_json(ws)
        # Replaying the whole room again and again, ignoring every Retry-After: 120
        # replays are the budget; each further 120 refused are a violation.
        for n in range(120 * 11):
            await ws.send(orjson.dumps({"op": "subscribe", "room": room, "since": 0, "ref": n}).decode())
            answer = await recv_until(ws, lambda f, n=n: f.get("ref") == n, timeout=20)
            codes[answer.get("code", 200)] += 1
    assert codes == Counter({200: 120, 429: 1200}), codes
    assert int(await redis.get(f"violations:ip:{ip}")) == 10
    async with httpx.AsyncClient(base_url=limited_server.url, headers={"X-Test-Client-IP": ip}) as client:
        refused = await client.get("/channels")
    assert refused.status_code == 403 and refused.json() == {"error": "temporarily blocked"}


async def test_the_python_stream_waits_out_a_refused_connection(start_server, server, http) -> None:
    """Over the session cap the upgrade is refused with 429 and Retry-After: 10. The
    stream's own pause after a failure is a fraction of a second; it must wait the 10 s."""
    capped = start_server(RATE_LIMIT_WHITELIST="", MAX_SESSIONS_PER_IP="1")  # 127.0.0.1 counts here
    refusals = 'reason="session_cap"'
    room = (await (await new_agent(http)).create_room(http))["id"]
    try:
        async with AsyncClient(capped.url) as client:
            holder = Stream(client, [room])
            holding = await _pump(holder)
            await asyncio.wait_for(holder.wait_ready(), 10)
            waiter = Stream(client, [room], backoff=0.05, max_backoff=0.2)
            waiting = await _pump(waiter)
            async with asyncio.timeout(10):
                # The refusal shows in /metrics only: poll it (bounded).
                while await asyncio.to_thread(metric, capped.url, "aicq_blocked_requests_total", refusals) < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await _stop(holding, holder)  # the slot is free from now on
            await asyncio.wait_for(waiter.wait_ready(), 20)
            # Without Retry-After it would have come back several times a second meanwhile.
            assert await asyncio.to_thread(metric, capped.url, "aicq_blocked_requests_total", refusals) == 1
            await _stop(waiting, waiter)
    finally:
        await asyncio.to_thread(capped.stop)


async def _pump(stream: Stream) -> asyncio.Task[None]:
    async def drain() -> None:
        async for _ in stream:
            pass

    return asyncio.create_task(drain())


async def _stop(task: asyncio.Task[None], stream: Stream) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await stream.aclose()
