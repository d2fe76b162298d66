"""One of two instances is SIGKILLed under load (SPEC §1, §6).

Two servers share PostgreSQL and Redis. Subscribers follow one room: a raw
WebSocket client and the client library's stream (given both instance URLs)
start on the victim; a raw client and a library stream start on the survivor.
The raw clients reconnect to the other instance and resubscribe with ``since``.

The run has two phases, so each promise is judged on traffic that exercises it:

1. a concurrent burst — eight posters, four through each instance, back to back —
   with both instances up (ordering under concurrency);
2. a full-speed sequential poster alternating between the instances, during which
   the victim is SIGKILLed; the poster then carries on through the survivor.

Judged: every message that got a 201 reaches every subscriber exactly once, in
(ts, id) order, and is in history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers import ServerProcess, new_agent
from tests.outages import Outage, Way
from tests.resilience.harness import (
    Figures,
    LibrarySubscriber,
    Poster,
    Record,
    Subscriber,
    Tally,
    accepted_ids,
    check_each_subscriber_got_each_accepted_once,
    check_history_holds_each_accepted_once,
    now,
    play,
    start_all,
    stop_all,
)

BURST_POSTERS = 8
BURST_ACCEPTED = 300
BEFORE_KILL_ACCEPTED = 50
AFTER_KILL_ACCEPTED = 50
RECOVERY_TIMEOUT_S = 15.0
CATCH_UP_TIMEOUT_S = 8.0
SCENARIO_TIMEOUT_S = 60.0


@dataclass(kw_only=True)
class InstanceKill(Record):
    killed: float = 0.0
    figures: Figures = field(default_factory=lambda: Figures("one of two instances SIGKILLed"))


@pytest.fixture(scope="module")
async def kill(start_module_server, figures_log: list[str]) -> InstanceKill:
    victim, survivor = start_module_server(), start_module_server()
    print(f"server logs: victim {victim.log_path}, survivor {survivor.log_path}")
    try:
        run = await play(_run(victim, survivor), SCENARIO_TIMEOUT_S)
    finally:
        victim.stop()
        survivor.stop()
    _figures(run)
    run.report(figures_log)
    return run


async def _run(victim: ServerProcess, survivor: ServerProcess) -> InstanceKill:
    both, reverse = [victim.url, survivor.url], [survivor.url, victim.url]
    async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
        agents = [await new_agent(http, f"kill-poster-{n}") for n in range(BURST_POSTERS)]
        room = (await agents[0].create_room(http))["id"]
        subscribers: list[Tally] = [
            Subscriber("raw on victim", both, room),
            LibrarySubscriber("library on victim", both, room),
            Subscriber("raw on survivor", reverse, room),
            LibrarySubscriber("library on survivor", reverse, room),
        ]
        listening = await start_all(subscribers)
        burst = [Poster(f"burst{n}", agent, room, both if n % 2 == 0 else reverse, 0.0)
                 for n, agent in enumerate(agents)]
        steady = Poster("steady", agents[0], room, both, 0.0, alternate=True)
        run = InstanceKill(posters=[*burst, steady], subscribers=subscribers)
        try:
            await _burst(burst, subscribers)
            await _kill_under_steady_posting(run, steady, victim, subscribers)
            await run.catch_up(CATCH_UP_TIMEOUT_S)
        finally:
            await stop_all(listening)
        await run.finish(http, survivor.url, room)
    return run


async def _burst(posters: list[Poster], subscribers: list[Tally]) -> None:
    stop = asyncio.Event()
    traffic = [asyncio.create_task(p.run(stop)) for p in posters]
    try:
        started = now()
        await posters[0].wait_until(lambda: sum(p.accepted_since(started) for p in posters) >= BURST_ACCEPTED,
                                    RECOVERY_TIMEOUT_S)
    finally:
        stop.set()
        await asyncio.gather(*traffic)
    accepted = accepted_ids(posters)
    await asyncio.gather(*(s.wait_for_ids(accepted, CATCH_UP_TIMEOUT_S) for s in subscribers))


async def _kill_under_steady_posting(run: InstanceKill, poster: Poster, victim: ServerProcess,
                                     subscribers: list[Tally]) -> None:
    stop = asyncio.Event()
    posting = asyncio.create_task(poster.run(stop))
    try:
        if not await poster.wait_accepted_since(now(), BEFORE_KILL_ACCEPTED, RECOVERY_TIMEOUT_S):
            raise RuntimeError("no steady traffic before the kill")
        run.killed = now()
        await Outage(victim, Way.KILLED).begin()
        await poster.wait_accepted_since(run.killed, AFTER_KILL_ACCEPTED, RECOVERY_TIMEOUT_S)
        moved = [s for s in subscribers if isinstance(s, Subscriber) and s.urls[0] == victim.url]
        await asyncio.gather(*(s.wait_until(lambda s=s: bool(s.outages) and s.outages[-1][1] is not None,
                                            RECOVERY_TIMEOUT_S) for s in moved))
    finally:
        stop.set()
        await posting


def _figures(run: InstanceKill) -> None:
    f = run.figures
    attempts = [a for p in run.posters for a in p.attempts]
    f.add("messages sent", len(attempts))
    f.add("accepted (201)", len(run.accepted))
    f.add("no answer (instance gone)", sum(1 for a in attempts if a.status is None))
    f.add("other answers", sorted({a.status for a in attempts if a.status not in (201, None)}))
    f.add("stored without a 201", len(run.maybe))
    run.add_delivery_figures()
    f.add("out of order (all subscribers)", sum(v.out_of_order for v in run.verdicts))
    steady = run.posters[-1]
    failed = [a for a in steady.attempts if not a.accepted and a.started >= run.killed]
    if failed:
        back = next((a for a in steady.attempts if a.accepted and a.started > failed[0].started), None)
        f.add("posting interrupted for", (back.ended - failed[0].started) if back else "ever after")
    for s in run.subscribers:
        if isinstance(s, Subscriber):
            gaps = [f"{(back - lost):.2f}s" if back else "never" for lost, back in s.outages]
            f.add(f"{s.name}: time to resubscribe", f"{gaps or 'not disconnected'}")
        else:
            f.add(f"{s.name}: stream connections", s.connections)  # type: ignore[attr-defined]


async def test_every_subscriber_gets_every_accepted_message_once(kill: InstanceKill) -> None:
    check_each_subscriber_got_each_accepted_once(kill, in_order=False)


async def test_every_subscriber_gets_them_in_order(kill: InstanceKill) -> None:
    for v in kill.verdicts:
        print(f"{v.name}: out of order {v.out_of_order} of {v.delivered}")
    assert all(v.out_of_order == 0 for v in kill.verdicts)


async def test_history_holds_every_accepted_message_once(kill: InstanceKill) -> None:
    check_history_holds_each_accepted_once(kill)
