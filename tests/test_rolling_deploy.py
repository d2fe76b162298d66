"""Rolling deploy rehearsal (SPEC §6 shutdown, §10): one instance goes, nobody notices.

Two instances A and B share the stores. Six agents stream one room through the
client library, four connected to A first and two to B, each told both URLs. A
publisher posts steadily, alternating A and B (only B once A refuses). A gets
SIGTERM in mid-flow: its sessions are closed with 1012, the clients move to B
and resume with ``since``. In the end every agent holds every stored message
exactly once, in (ts, id) order, and the stored messages are exactly the ones
the publisher was told were accepted.

The rehearsal runs once (``rehearsal``); the tests judge its record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from aicq.client import AsyncClient, Credentials, Message, Stream
from tests.helpers import Agent, ServerProcess
from tests.outages import Outage, Way

AGENTS_ON_A, AGENTS_ON_B = 4, 2
MESSAGES = 150
KILL_AFTER = 50  # SIGTERM A once this many posts were accepted
INTERVAL = 0.015  # the publisher's pace: steady traffic, not a flood
WAIT = 15.0
A, B = "rehearsal-a", "rehearsal-b"


@dataclass
class Watcher:
    """One streaming agent and what it received."""

    stream: Stream
    first_instance: str = ""
    received: list[Message] = field(default_factory=list)
    moved_at: float | None = None  # first event that came through B after the SIGTERM
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, a_stop: Outage) -> None:
        async for event in self.stream:
            if not isinstance(event, Message):
                continue
            self.received.append(event)
            on_b = self.stream.hello is not None and self.stream.hello.get("instance") == B
            if a_stop.asked and on_b and self.moved_at is None and self.first_instance != B:
                self.moved_at = time.monotonic() - a_stop.asked
            self.changed.set()

    async def until_holds(self, ids: set[str]) -> None:
        while not ids.issubset(m.id for m in self.received):
            self.changed.clear()
            await self.changed.wait()

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.received]


@dataclass
class Rehearsal:
    a_stop: Outage  # A's SIGTERM: its moments, and the exit code it reported
    watchers: list[Watcher] = field(default_factory=list)
    first_hellos: list[str] = field(default_factory=list)  # the instance each watcher met first
    sent: int = 0
    accepted: list[str] = field(default_factory=list)
    refused_by_a: int = 0
    stored: list[str] = field(default_factory=list)

    @property
    def on_a(self) -> list[Watcher]:
        return self.watchers[:AGENTS_ON_A]

    @property
    def on_b(self) -> list[Watcher]:
        return self.watchers[AGENTS_ON_A:]


@pytest.fixture(scope="module")
async def rehearsal(start_module_server) -> Rehearsal:
    a: ServerProcess = start_module_server(FLY_ALLOC_ID=A)
    b: ServerProcess = start_module_server(FLY_ALLOC_ID=B)
    run = Rehearsal(Outage(a, Way.STOPPED))
    async with AsyncExitStack() as stack:
        to_a = await stack.enter_async_context(httpx.AsyncClient(base_url=a.url, timeout=10))
        to_b = await stack.enter_async_context(httpx.AsyncClient(base_url=b.url, timeout=10))
        publisher = await Agent().register(to_b, "publisher")
        room = (await publisher.create_room(to_b))["id"]
        await stack.enter_async_context(_watching(run, room, a, b))
        await _publish(run, publisher, room, to_a, to_b)
        run.stored = await _history(to_b, room)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(w.until_holds(set(run.stored)) for w in run.watchers))
    _print_figures(run)
    return run


@asynccontextmanager
async def _watching(run: Rehearsal, room: str, a: ServerProcess, b: ServerProcess) -> AsyncIterator[None]:
    """Six agents streaming ``room``, ready; they stop when the block ends."""
    clients: list[AsyncClient] = []
    tasks: list[asyncio.Task] = []
    try:
        for index in range(AGENTS_ON_A + AGENTS_ON_B):
            client = AsyncClient(b.url, Credentials.generate())
            clients.append(client)
            await client.register(f"watcher-{index}")
            urls = [a.url, b.url] if index < AGENTS_ON_A else [b.url, a.url]
            stream = client.stream([room], urls=urls, first_attempts=3)
            run.watchers.append(Watcher(stream, A if index < AGENTS_ON_A else B))
        tasks = [asyncio.create_task(w.run(run.a_stop)) for w in run.watchers]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(w.stream.wait_ready() for w in run.watchers))
        run.first_hellos = [w.stream.hello["instance"] for w in run.watchers]  # type: ignore[index]
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watcher in run.watchers:
            await watcher.stream.aclose()
        for client in clients:
            await client.aclose()


async def _publish(run: Rehearsal, publisher: Agent, room: str,
                   to_a: httpx.AsyncClient, to_b: httpx.AsyncClient) -> None:
    """MESSAGES posts, A and B in turn until A refuses; A gets SIGTERM after KILL_AFTER."""
    stopper, a_up = None, True
    async with asyncio.timeout(WAIT + 10):
        for n in range(MESSAGES):
            if len(run.accepted) == KILL_AFTER and stopper is None:
                stopper = asyncio.create_task(run.a_stop.begin())
            targets = [to_a, to_b] if a_up and n % 2 == 0 else [to_b]
            for target in targets:
                run.sent += 1
                try:
                    response = await publisher.post(target, room, f"msg {n}")
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 201:
                    run.accepted.append(response.json()["id"])
                    break
                if target is to_b:
                    raise RuntimeError(f"B refused a post: {response and response.text}")
                a_up, run.refused_by_a = False, run.refused_by_a + 1
            await asyncio.sleep(INTERVAL)  # pacing, not waiting for anything
        if stopper is None:
            raise RuntimeError("A was never stopped")
        await stopper


async def _history(http: httpx.AsyncClient, room: str) -> list[str]:
    """Every stored message id, oldest first (walking ``before=<id>``)."""
    ids: list[str] = []
    params: dict = {"limit": 200}
    while True:
        page = (await http.get(f"/room/{room}", params=params)).json()
        ids += [m["id"] for m in page["messages"]]
        if not page["has_more"]:
            return ids[::-1]
        params["before"] = ids[-1]


def _print_figures(run: Rehearsal) -> None:
    stop = run.a_stop
    print(f"\nrolling deploy: sent {run.sent} posts ({run.refused_by_a} refused by A while it stopped), "
          f"accepted {len(run.accepted)}, stored {len(run.stored)}; A exited {stop.stopped_with} "
          f"{stop.gone - stop.asked:.2f} s after SIGTERM")
    for index, w in enumerate(run.watchers):
        print("  ", {"agent": index, "started_on": w.first_instance[-1], "delivered": len(w.ids),
                     "lost": len(set(run.stored) - set(w.ids)), "duplicates": len(w.ids) - len(set(w.ids)),
                     "fail_over_ms": None if w.moved_at is None else round(w.moved_at * 1000)})


async def test_every_agent_starts_where_it_was_sent(rehearsal: Rehearsal) -> None:
    assert rehearsal.first_hellos == [w.first_instance for w in rehearsal.watchers]


async def test_a_exits_cleanly_on_sigterm(rehearsal: Rehearsal) -> None:
    assert rehearsal.a_stop.stopped_with == 0


async def test_what_was_accepted_is_exactly_what_is_stored(rehearsal: Rehearsal) -> None:
    assert rehearsal.stored == rehearsal.accepted and len(rehearsal.stored) == MESSAGES  # one publisher: posting order


async def test_every_agent_holds_every_message_once_in_order(rehearsal: Rehearsal) -> None:
    for index, w in enumerate(rehearsal.watchers):
        assert w.ids == rehearsal.stored, f"agent {index}: not every message exactly once in order"
    ordered = sorted(rehearsal.watchers[0].received, key=lambda m: (m.ts, m.id))
    assert [m.id for m in ordered] == rehearsal.stored


async def test_agents_on_a_move_to_b_after_a_1012(rehearsal: Rehearsal) -> None:
    assert all(w.stream.hello is not None and w.stream.hello["instance"] == B for w in rehearsal.watchers)
    for w in rehearsal.on_a:
        assert w.stream.last_close == 1012 and w.moved_at is not None
        assert w.stream.connections == 2
    for w in rehearsal.on_b:
        assert w.stream.connections == 1
