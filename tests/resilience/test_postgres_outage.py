"""PostgreSQL stops and comes back (SPEC §1, §4, §6, §9).

One scenario per module: a server on a private embedded PostgreSQL (the shared
Redis stays), a poster posting every 50 ms, a raw WebSocket subscriber and the
client library's stream following the room, and a health probe. Mid-outage the
endpoints that need PostgreSQL are tried once each: register, ``who`` of an agent
this server never saw (inserted straight into the database, as another instance
would have), ``channels`` and create-room.

SPEC promises: those refusals are fast, clean 503s; nothing accepted is lost;
open sessions keep streaming; everything works again once PostgreSQL is back,
without a restart. Agents and rooms are cached, so a known agent posting into a
known room keeps working through the outage; the room's ``message_count`` must
catch up with every accepted message once PostgreSQL is back (eventually).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson
import pytest

from tests.helpers import Agent, ServerProcess, new_agent
from tests.outages import PrivatePostgres, Way, away
from tests.resilience.harness import (
    FAIL_FAST_S,
    Figures,
    LibrarySubscriber,
    OutageRecord,
    Poster,
    Probe,
    Sample,
    Subscriber,
    check_each_subscriber_got_each_accepted_once,
    check_history_holds_each_accepted_once,
    clean_503,
    fetch,
    now,
    play,
    running_pid,
)

OUTAGE_S = 3.0
PROBE_AFTER_S = 0.5  # into the outage, the PostgreSQL endpoints are tried
RECOVERY_TIMEOUT_S = 20.0
CATCH_UP_TIMEOUT_S = 8.0
LIVE_S = 1.0  # a message accepted during the outage reaches open sessions this fast
COUNT_SETTLE_S = 6.0  # how long "eventually" may take for message_count
SCENARIO_TIMEOUT_S = 75.0


@dataclass(kw_only=True)
class PostgresOutage(OutageRecord):
    server: ServerProcess
    room: str
    health: Probe
    during: dict[str, Sample] = field(default_factory=dict)  # endpoint → answer mid-outage
    after: dict[str, Sample] = field(default_factory=dict)  # endpoint → first good answer after
    recovered_at: float | None = None  # every endpoint answered well again
    message_count: int | None = None  # the room's counter once settled
    pids: tuple[int, int] = (0, 0)
    figures: Figures = field(default_factory=lambda: Figures("PostgreSQL stops and returns"))

    @property
    def accepted_during(self) -> list[str]:
        return [a.id for a in self.poster.accepted if self.stopping <= a.started and a.ended <= self.starting]


@pytest.fixture(scope="module")
async def outage(start_module_server, private_postgres: PrivatePostgres, figures_log: list[str]) -> PostgresOutage:
    server = start_module_server(DATABASE_URL=private_postgres.dsn)
    print(f"server log: {server.log_path}")
    try:
        run = await play(_run(server, private_postgres), SCENARIO_TIMEOUT_S)
    finally:
        server.stop()
    _figures(run)
    run.report(figures_log)
    return run


async def _stranger(dsn: str) -> str:
    """An agent written by "another instance": this server has never cached it."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "INSERT INTO agents (public_key, name) VALUES ($1, 'stranger') RETURNING id::text", Agent().public_key
        )
    finally:
        await conn.close()


async def _database_endpoints(http: httpx.AsyncClient, base: str, author: Agent, stranger: str) -> dict[str, Sample]:
    """One try of each endpoint that needs PostgreSQL (register, who, channels, create room)."""
    raw = orjson.dumps({"name": f"pg-{secrets.token_hex(4)}"})
    register, who, channels, room = await asyncio.gather(
        fetch(http, "POST", f"{base}/register", json={"public_key": Agent().public_key, "name": "late"}),
        fetch(http, "GET", f"{base}/who/{stranger}"),
        fetch(http, "GET", f"{base}/channels"),
        fetch(http, "POST", f"{base}/room", content=raw, headers=author.headers(raw)),
    )
    return {"register": register, "who": who, "channels": channels, "create room": room}


GOOD = {"register": 201, "who": 200, "channels": 200, "create room": 201}


async def _run(server: ServerProcess, postgres: PrivatePostgres) -> PostgresOutage:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        author = await new_agent(http, "pg-outage-poster")
        room = (await author.create_room(http))["id"]
        stranger = await _stranger(postgres.dsn)
        run = PostgresOutage(
            server=server, room=room,
            posters=[Poster("pg", author, room, [server.url], interval=0.05)],
            subscribers=[Subscriber("raw", [server.url], room), LibrarySubscriber("library", [server.url], room)],
            health=Probe(f"{server.url}/health"),
        )
        async with run.in_motion(run.poster, run.health, catch_up_s=CATCH_UP_TIMEOUT_S):
            pid_before = running_pid(server)
            if not await run.poster.wait_accepted_since(now(), 10, timeout=10):
                raise RuntimeError("no steady traffic before the outage")
            async with away(postgres, Way.STOPPED) as run.absence:
                await asyncio.sleep(max(0.0, run.down + PROBE_AFTER_S - now()))  # the outage's length is the point
                run.during = await _database_endpoints(http, server.url, author, stranger)
                await asyncio.sleep(max(0.0, run.down + OUTAGE_S - now()))
            await _await_recovery(run, http, author, stranger)
            await run.poster.wait_accepted_since(run.starting, 10, RECOVERY_TIMEOUT_S)
            await run.health.wait_status_since(200, run.starting, RECOVERY_TIMEOUT_S)
        await run.finish(http, server.url, room)
        run.message_count = await _settled_count(http, room, len(run.accepted))
        run.pids = (pid_before, running_pid(server))
    return run


async def _await_recovery(run: PostgresOutage, http: httpx.AsyncClient, author: Agent, stranger: str) -> None:
    """Try the PostgreSQL endpoints until each has answered well once (or time runs out)."""
    deadline = run.starting + RECOVERY_TIMEOUT_S
    while now() < deadline and len(run.after) < len(GOOD):
        answers = await _database_endpoints(http, run.server.url, author, stranger)
        for name, sample in answers.items():
            if name not in run.after and sample.status == GOOD[name]:
                run.after[name] = sample
        if len(run.after) < len(GOOD):
            await asyncio.sleep(0.1)  # polling: the server offers nothing to wait on
    if len(run.after) == len(GOOD):
        run.recovered_at = max(s.started + s.elapsed for s in run.after.values())


async def _settled_count(http: httpx.AsyncClient, room: str, expected: int) -> int | None:
    """The room's message_count in /channels once it equals ``expected``, or after COUNT_SETTLE_S."""
    deadline = now() + COUNT_SETTLE_S
    count = None
    while True:
        response = await http.get("/channels", params={"limit": 100})
        if response.status_code == 200:
            count = next((c["message_count"] for c in response.json()["channels"] if c["id"] == room), None)
        if count == expected or now() >= deadline:
            return count
        await asyncio.sleep(0.2)  # polling: a counter offers nothing to wait on


def _figures(run: PostgresOutage) -> None:
    f, attempts = run.figures, run.poster.attempts
    f.add("messages sent", len(attempts))
    f.add("accepted (201)", len(run.accepted))
    f.add("accepted during the outage", len(run.accepted_during))
    f.add("other answers", sorted({a.status for a in attempts if a.status != 201}, key=str))
    run.add_delivery_figures()
    for name, sample in run.during.items():
        f.add(f"{name} during the outage", f"{sample.status} in {sample.elapsed:.3f}s {sample.answer}")
    f.add("PostgreSQL shutdown took", run.down - run.stopping)
    f.add("PostgreSQL down for", run.starting - run.down)
    f.add("PostgreSQL start took", run.up - run.starting)
    degraded = run.health.first(503, run.stopping)
    healthy = run.health.first(200, run.starting)
    if degraded is not None:
        end = healthy.started + healthy.elapsed if healthy else now()
        f.add("health degraded for", end - degraded.started)
    f.add("health back after start began", (healthy.started + healthy.elapsed - run.starting) if healthy else "never")
    f.add("all endpoints back after start began",
          (run.recovered_at - run.starting) if run.recovered_at else f"never ({sorted(run.after)} only)")
    f.add("message_count vs accepted",
          f"{run.message_count} vs {len(run.accepted)} (missed {len(run.accepted) - (run.message_count or 0)})")


async def test_database_endpoints_fail_fast_with_a_clean_503(outage: PostgresOutage) -> None:
    for name, sample in outage.during.items():
        print(f"{name}: {sample.status} in {sample.elapsed:.3f}s {sample.answer}")
    assert set(outage.during) == set(GOOD)
    assert all(clean_503(s) for s in outage.during.values())
    during = outage.health.between(outage.down, outage.starting)
    assert during, "no health sample during the outage"
    for sample in during:
        assert sample.status == 503 and sample.elapsed < FAIL_FAST_S, sample
        assert sample.answer["status"] == "degraded"
        assert sample.answer["checks"]["postgres"]["status"] == "fail"
        assert sample.answer["checks"]["redis"]["status"] == "pass"


async def test_posting_never_errors_and_open_sessions_keep_streaming(outage: PostgresOutage) -> None:
    """Posting may work or be refused cleanly; what was accepted streams live, outage or not."""
    bad = [(a.status, round(a.elapsed, 2), a.answer) for a in outage.poster.attempts
           if not (a.accepted and a.elapsed < FAIL_FAST_S) and not clean_503(a)]
    during = outage.accepted_during
    accepted_at = {a.id: a.ended for a in outage.poster.accepted}
    print(f"accepted during the outage {len(during)}, bad answers {bad[:5]}")
    assert not bad
    for subscriber in outage.subscribers:
        live = [i for i in during if subscriber.arrived.get(i, float("inf")) - accepted_at[i] < LIVE_S]
        print(f"{subscriber.name}: {len(live)} of {len(during)} outage messages arrived live")
        assert live == during
    check_each_subscriber_got_each_accepted_once(outage)


async def test_everything_works_again_without_a_restart(outage: PostgresOutage) -> None:
    print({name: (s.status, round(s.started - outage.starting, 2)) for name, s in outage.after.items()})
    assert set(outage.after) == set(GOOD), f"still failing: {set(GOOD) - set(outage.after)}"
    assert outage.health.first(200, outage.starting) is not None
    after = outage.health.samples[-3:]
    assert all(s.status == 200 for s in after), [s.status for s in after]
    assert outage.pids[0] == outage.pids[1] != 0


async def test_history_holds_every_accepted_message_once(outage: PostgresOutage) -> None:
    check_history_holds_each_accepted_once(outage)


async def test_message_count_catches_up_with_what_was_accepted(outage: PostgresOutage) -> None:
    """Posts accepted while PostgreSQL was away are counted once it is back (eventually)."""
    print(f"message_count {outage.message_count}, accepted {len(outage.accepted)}, "
          f"accepted during the outage {len(outage.accepted_during)}")
    assert outage.message_count == len(outage.accepted)
