"""Rolling deploy rehearsal (SPEC §6 shutdown, §10): one instance goes, nobody notices.

Two instances A and B share the stores. Six agents stream one room through the
client library, four connected to A first and two to B, each told both URLs. A
publisher posts steadily, alternating A and B (only B once A refuses). A gets
SIGTERM in mid-flow: its sessions are closed with 1012, the clients move to B
and resume with ``since``. In the end every agent holds every stored message
exactly once, in (ts, id) order, and the stored messages are exactly the ones
the publisher was told were accepted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from aicq.client import AsyncClient, Credentials, Message, Stream
from tests.helpers import Agent, ServerProcess

AGENTS_ON_A, AGENTS_ON_B = 4, 2
MESSAGES = 150
KILL_AFTER = 50  # SIGTERM A once this many posts were accepted
INTERVAL = 0.015  # the publisher's pace: steady traffic, not a flood
WAIT = 15.0


@dataclass
class Watcher:
    """One streaming agent and what it received."""

    stream: Stream
    first_instance: str = ""
    received: list[Message] = field(default_factory=list)
    moved_at: float | None = None  # first event that came through B after the SIGTERM
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, b_instance: str, killed: asyncio.Event, clock: dict[str, float]) -> None:
        async for event in self.stream:
            if not isinstance(event, Message):
                continue
            self.received.append(event)
            on_b = self.stream.hello is not None and self.stream.hello.get("instance") == b_instance
            if killed.is_set() and on_b and self.moved_at is None and self.first_instance != b_instance:
                self.moved_at = time.monotonic() - clock["killed"]
            self.changed.set()

    async def until_holds(self, ids: set[str]) -> None:
        while not ids.issubset(m.id for m in self.received):
            self.changed.clear()
            await self.changed.wait()


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


async def test_rolling_deploy_rehearsal(start_server) -> None:
    a: ServerProcess = start_server(FLY_ALLOC_ID="rehearsal-a")
    b: ServerProcess = start_server(FLY_ALLOC_ID="rehearsal-b")
    to_a = httpx.AsyncClient(base_url=a.url, timeout=10)
    to_b = httpx.AsyncClient(base_url=b.url, timeout=10)
    clients: list[AsyncClient] = []
    tasks: list[asyncio.Task] = []
    watchers: list[Watcher] = []
    try:
        publisher = await Agent().register(to_b, "publisher")
        room = (await publisher.create_room(to_b))["id"]
        for index in range(AGENTS_ON_A + AGENTS_ON_B):
            client = AsyncClient(b.url, Credentials.generate())
            clients.append(client)
            await client.register(f"watcher-{index}")
            urls = [a.url, b.url] if index < AGENTS_ON_A else [b.url, a.url]
            stream = client.stream([room], urls=urls, first_attempts=3)
            watchers.append(Watcher(stream, "rehearsal-a" if index < AGENTS_ON_A else "rehearsal-b"))

        killed, clock = asyncio.Event(), {}
        tasks = [asyncio.create_task(w.run("rehearsal-b", killed, clock)) for w in watchers]
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(w.stream.wait_ready() for w in watchers))
        assert [w.stream.hello["instance"] for w in watchers] == [w.first_instance for w in watchers]

        sent, accepted, refused_by_a = 0, [], 0
        a_up, exit_code = True, None

        async def terminate_a() -> None:
            nonlocal exit_code
            clock["killed"] = time.monotonic()
            killed.set()
            exit_code = await asyncio.to_thread(a.stop)
            clock["a_exited"] = time.monotonic() - clock["killed"]

        stopper = None
        async with asyncio.timeout(WAIT + 10):
            for n in range(MESSAGES):
                if len(accepted) == KILL_AFTER and stopper is None:
                    stopper = asyncio.create_task(terminate_a())
                body = f"msg {n}"
                targets = [to_a, to_b] if a_up and n % 2 == 0 else [to_b]
                for target in targets:
                    sent += 1
                    try:
                        response = await publisher.post(target, room, body)
                    except httpx.TransportError:
                        response = None
                    if response is not None and response.status_code == 201:
                        accepted.append(response.json()["id"])
                        break
                    assert target is to_a, f"B refused a post: {response and response.text}"
                    a_up, refused_by_a = False, refused_by_a + 1
                await asyncio.sleep(INTERVAL)  # pacing, not waiting for anything
            assert stopper is not None
            await stopper

        stored = await _history(to_b, room)
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(w.until_holds(set(stored)) for w in watchers))

        figures = []
        for index, w in enumerate(watchers):
            ids = [m.id for m in w.received]
            figures.append({
                "agent": index, "started_on": w.first_instance[-1],
                "delivered": len(ids), "lost": len(set(stored) - set(ids)),
                "duplicates": len(ids) - len(set(ids)),
                "fail_over_ms": None if w.moved_at is None else round(w.moved_at * 1000),
            })
        print(f"\nrolling deploy: sent {sent} posts ({refused_by_a} refused by A while it stopped), "
              f"accepted {len(accepted)}, stored {len(stored)}; A exited {exit_code} "
              f"{clock['a_exited']:.2f} s after SIGTERM")
        for row in figures:
            print("  ", row)

        assert exit_code == 0
        assert stored == accepted and len(stored) == MESSAGES  # one publisher: posting order
        for index, w in enumerate(watchers):
            ids = [m.id for m in w.received]
            assert ids == stored, f"agent {index}: not every message exactly once in order"
            assert w.stream.hello["instance"] == "rehearsal-b"
            if index < AGENTS_ON_A:
                assert w.stream.last_close == 1012 and w.moved_at is not None
                assert w.stream.connections == 2
            else:
                assert w.stream.connections == 1
        ordered = sorted(watchers[0].received, key=lambda m: (m.ts, m.id))
        assert [m.id for m in ordered] == stored
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watcher in watchers:
            await watcher.stream.aclose()
        for client in clients:
            await client.aclose()
        await to_a.aclose()
        await to_b.aclose()
