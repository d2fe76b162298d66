"""A partition between one instance and Redis: its connections stay open, nothing comes back.

A failover or a network partition leaves an instance's connections open to nobody.
Unlike a freeze, nothing comes back on them, ever; connections opened afterwards
work (the route, or the new primary, is there). Instance A reaches Redis through a
proxy that silences every connection open at the moment of the partition; instance
B reaches it directly and is never touched.

A poster posts through A and B in turn; a raw subscriber and the client library's
stream follow the room on A, a raw subscriber on B. Requests through A that meet a
silenced connection get a 503 within the request's budget, and the connection is
dropped. A's pub/sub connection only reads, so the silence is all it sees: the hub
must declare it lost on its own, reconnect and back-fill, or A's sessions would
never hear of the room again.

Judged: every 201's message reaches every subscriber once, in order; no session is
closed; every request ends within 2 s with a 201 or a 503.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers import RedisProcess, ServerProcess, new_agent
from tests.proxy import FaultyProxy
from tests.resilience.harness import (
    Figures,
    LibrarySubscriber,
    Poster,
    Record,
    Subscriber,
    check_each_subscriber_got_each_accepted_once,
    check_history_holds_each_accepted_once,
    now,
    play,
)

BOUND_S = 2.0
BEFORE_ACCEPTED = 10
AFTER_ACCEPTED = 10  # accepted through A once its sessions hear of the room again
RECOVERY_TIMEOUT_S = 20.0  # the hub notices within ~7 s (rediskit.Liveness)
CATCH_UP_TIMEOUT_S = 8.0
SCENARIO_TIMEOUT_S = 60.0


@dataclass(kw_only=True)
class Partition(Record):
    a: str
    partitioned: float = 0.0
    live_again: float | None = None  # A's raw subscriber got a message posted after the partition
    figures: Figures = field(default_factory=lambda: Figures("instance A cut off from Redis"))

    @property
    def poster(self) -> Poster:
        return self.posters[0]


@pytest.fixture(scope="module")
async def proxy(private_redis: RedisProcess) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(private_redis.url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
async def partition(start_module_server, private_redis: RedisProcess, proxy: FaultyProxy,
                    figures_log: list[str]) -> Partition:
    # The proxy runs in this event loop: start A from a thread, so the loop serves it.
    a = await asyncio.to_thread(start_module_server, REDIS_URL=proxy.url)
    b = start_module_server(REDIS_URL=private_redis.url)
    print(f"server logs: A {a.log_path}, B {b.log_path}")
    try:
        run = await play(_run(a, b, proxy), SCENARIO_TIMEOUT_S)
    finally:
        a.stop()
        b.stop()
    _figures(run)
    run.report(figures_log)
    return run


async def _run(a: ServerProcess, b: ServerProcess, proxy: FaultyProxy) -> Partition:
    async with httpx.AsyncClient(base_url=b.url, timeout=10) as http:
        agent = await new_agent(http, "partition")
        room = (await agent.create_room(http))["id"]
        on_a = Subscriber("raw on A", [a.url], room)
        run = Partition(
            a=a.url, posters=[Poster("partition", agent, room, [a.url, b.url], 0.1, alternate=True)],
            subscribers=[on_a, LibrarySubscriber("library on A", [a.url], room), Subscriber("raw on B", [b.url], room)],
        )
        async with run.in_motion(run.poster, catch_up_s=CATCH_UP_TIMEOUT_S):
            if not await run.poster.wait_accepted_since(now(), BEFORE_ACCEPTED, RECOVERY_TIMEOUT_S):
                raise RuntimeError("no steady traffic before the partition")
            run.partitioned = now()
            proxy.partition()
            if await on_a.wait_until(lambda: _heard_since(run, on_a), RECOVERY_TIMEOUT_S):
                run.live_again = now()
                await run.poster.wait_accepted_since(run.live_again, AFTER_ACCEPTED, RECOVERY_TIMEOUT_S)
        await run.finish(http, b.url, room)
    return run


def _heard_since(run: Partition, subscriber: Subscriber) -> bool:
    """Has ``subscriber`` received a message accepted after the partition began?"""
    return any(a.id in subscriber.counts for a in run.poster.accepted if a.started > run.partitioned)


def _figures(run: Partition) -> None:
    f, attempts = run.figures, run.poster.attempts
    f.add("posts", dict(sorted(Counter(a.status for a in attempts).items(), key=str)))
    f.add("slowest post", max(a.elapsed for a in attempts))
    f.add("A's sessions live again after", (run.live_again - run.partitioned) if run.live_again else "never")
    run.add_delivery_figures()


async def test_every_request_ends_within_2s_with_a_201_or_a_503(partition: Partition) -> None:
    attempts = partition.poster.attempts
    print(f"slowest {max(a.elapsed for a in attempts):.3f}s, {[a.status for a in attempts]}")
    assert all(a.elapsed < BOUND_S and a.status in (201, 503) for a in attempts)


async def test_the_partitioned_instance_hears_of_the_room_again(partition: Partition) -> None:
    print(f"live again after {partition.live_again and partition.live_again - partition.partitioned}")
    assert partition.live_again is not None, "A's pub/sub connection was never found dead"


async def test_every_subscriber_gets_every_accepted_message_once(partition: Partition) -> None:
    check_each_subscriber_got_each_accepted_once(partition)


async def test_history_holds_every_accepted_message_once(partition: Partition) -> None:
    check_history_holds_each_accepted_once(partition)


async def test_no_session_is_closed(partition: Partition) -> None:
    for s in partition.subscribers:
        kept = s.connections == 1 and (not isinstance(s, Subscriber) or not s.closes)  # type: ignore[attr-defined]
        assert kept, s.name
