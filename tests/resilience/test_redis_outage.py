"""Redis stops for 5 s under steady posting and streaming, then comes back (SPEC §4, §6).

One scenario runs once per module against a server on a private redis-server
(append-only, so data survive its restart; PostgreSQL stays the shared one):

- a poster posts every 50 ms over REST and keeps every answer;
- probes read ``/health`` and the room's history every 100 ms; bursts of 16
  concurrent GETs come once before the outage and three times after it;
- three subscribers follow the room: ``steady`` (raw WebSocket, never touched by
  the test), ``dropped`` (raw WebSocket whose TCP connection the test cuts one
  second into the outage; it reconnects and resubscribes with ``since``), and
  ``library`` (the client library's resuming stream).

The tests below judge that record against what SPEC promises: refusals are fast,
clean 503s; health degrades and recovers without a restart (not stuck degraded);
every message that got a 201 is in history and reaches every subscriber exactly
once. Refusals after health came back are reported in the figures: pooled Redis
connections that sat out the outage fail once each (in about two runs out of three
a burst meets some), too irregular to pin down with a strict xfail.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers import RedisProcess, ServerProcess, new_agent
from tests.outages import Way, away
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
    unavailable_span,
)

OUTAGE_S = 5.0
DROP_AFTER_S = 1.0  # into the outage, the `dropped` subscriber loses its connection
RECOVERY_TIMEOUT_S = 15.0
CATCH_UP_TIMEOUT_S = 8.0
AFTER_ACCEPTED = 30  # posts accepted after Redis returns before the poster stops (about 1.5 s)
BURST = 16  # concurrent requests in a burst
BURSTS_AFTER = 3
SCENARIO_TIMEOUT_S = 60.0


@dataclass(kw_only=True)
class RedisOutage(OutageRecord):
    server: ServerProcess
    health: Probe
    reads: Probe
    bursts: list[Sample] = field(default_factory=list)  # concurrent GETs before and after the outage
    server_pid_before: int = 0
    server_pid_after: int = 0
    figures: Figures = field(default_factory=lambda: Figures("Redis stops for 5 s"))


@pytest.fixture(scope="module")
async def outage(start_module_server, private_redis: RedisProcess, figures_log: list[str]) -> RedisOutage:
    server = start_module_server(REDIS_URL=private_redis.url)
    print(f"server log: {server.log_path}")
    try:
        run = await play(_run(server, private_redis), SCENARIO_TIMEOUT_S)
    finally:
        server.stop()
    _figures(run)
    run.report(figures_log)
    return run


async def _run(server: ServerProcess, redis: RedisProcess) -> RedisOutage:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        agent = await new_agent(http, "redis-outage-poster")
        room = (await agent.create_room(http))["id"]
        dropped = Subscriber("dropped", [server.url], room)
        run = RedisOutage(
            server=server,
            posters=[Poster("redis", agent, room, [server.url], interval=0.05)],
            subscribers=[Subscriber("steady", [server.url], room), dropped,
                         LibrarySubscriber("library", [server.url], room)],
            health=Probe(f"{server.url}/health"),
            reads=Probe(f"{server.url}/room/{room}?limit=5"),
        )
        async with run.in_motion(run.poster, run.health, run.reads, catch_up_s=CATCH_UP_TIMEOUT_S):
            run.server_pid_before = running_pid(server)
            if not await run.poster.wait_accepted_since(now(), 10, timeout=10):
                raise RuntimeError("no steady traffic before the outage")
            run.bursts += await _burst(http, room)  # a busy moment: the server's Redis pool grows
            async with away(redis, Way.STOPPED) as run.absence:
                await asyncio.sleep(DROP_AFTER_S)  # the outage's length is the point: time, not an event
                dropped.drop()
                await asyncio.sleep(max(0.0, run.stopping + OUTAGE_S - now()))
            await _recover(run, http, room)
        await run.finish(http, server.url, room)
        run.server_pid_after = running_pid(server)
    return run


async def _recover(run: RedisOutage, http: httpx.AsyncClient, room: str) -> None:
    """Redis is back: health recovers, posting resumes, and the server gets busy again."""
    await run.health.wait_status_since(200, run.starting, RECOVERY_TIMEOUT_S)
    await run.poster.wait_accepted_since(run.starting, AFTER_ACCEPTED // 2, RECOVERY_TIMEOUT_S)
    for _ in range(BURSTS_AFTER):  # busy again once Redis is back
        run.bursts += await _burst(http, room)
    await run.poster.wait_accepted_since(run.starting, AFTER_ACCEPTED, RECOVERY_TIMEOUT_S)


async def _burst(http: httpx.AsyncClient, room: str) -> list[Sample]:
    """BURST requests at once, half reading the room, half asking for health."""
    paths = [f"/room/{room}?limit=5" if n % 2 else "/health" for n in range(BURST)]
    return list(await asyncio.gather(*(fetch(http, "GET", path) for path in paths)))


def _figures(run: RedisOutage) -> None:
    f, attempts = run.figures, run.poster.attempts
    f.add("messages sent", len(attempts))
    f.add("accepted (201)", len(run.accepted))
    f.add("refused (503)", sum(1 for a in attempts if a.status == 503))
    f.add("other answers", sum(1 for a in attempts if a.status not in (201, 503)))
    f.add("stored without a 201", len(run.maybe))
    f.add("slowest refusal", max((a.elapsed for a in attempts if not a.accepted), default=0.0))
    run.add_delivery_figures()
    first_bad, first_good = unavailable_span([run.poster], run.stopping)
    if first_bad is not None:
        end = first_good if first_good is not None else now()
        f.add("posting unavailable for", end - first_bad)
    f.add("Redis down for", run.starting - run.down)
    f.add("Redis start took", run.up - run.starting)
    first_post = next((a for a in run.poster.attempts if a.accepted and a.started >= run.starting), None)
    f.add("posting back after start began", (first_post.ended - run.starting) if first_post else "never")
    healthy = run.health.first(200, run.starting)
    f.add("health back after start began", (healthy.started + healthy.elapsed - run.starting) if healthy else "never")
    healthy_at = healthy.started if healthy else run.up
    late = sorted(((round(x.started - healthy_at, 2), kind)
                  for kind, samples in (("post", run.poster.attempts), ("read", run.reads.samples),
                                        ("health", run.health.samples), ("burst", run.bursts))
                   for x in samples if x.started > healthy_at and x.status not in (200, 201)))
    f.add("refusals after health came back", f"{len(late)} {late[:6]}")
    for s in run.subscribers:
        if isinstance(s, Subscriber):
            gaps = [f"{(back - lost):.2f}s" if back else "never" for lost, back in s.outages]
            f.add(f"{s.name}: server closes / resubscribes",
                  f"{s.closes} / {s.subscriptions - 1} (time to resubscribe {gaps or 'n/a'})")
        else:
            f.add(f"{s.name}: stream connections", s.connections)  # type: ignore[attr-defined]


async def test_requests_fail_fast_with_a_clean_503(outage: RedisOutage) -> None:
    """Every answer is a 201 or a fast 503 with a JSON error: no 500, no hang."""
    samples = [*outage.poster.attempts, *outage.reads.samples, *outage.bursts]
    bad = [(s.status, round(s.elapsed, 2), s.answer) for s in samples
           if not (s.status in (200, 201) and s.elapsed < FAIL_FAST_S) and not clean_503(s)
           and not _degraded(s)]
    refused = [a for a in outage.poster.attempts if a.status == 503]
    print(f"attempts {len(samples)}, refused {len(refused)}, "
          f"slowest {max(s.elapsed for s in samples):.2f}s, bad {bad[:5]}")
    assert not bad
    assert refused, "the outage refused nothing: Redis was not really away"
    reads_during = outage.reads.between(outage.down, outage.starting)
    assert reads_during and all(clean_503(s) for s in reads_during)


def _degraded(sample: Sample) -> bool:
    """/health's own 503: the degraded report (it carries checks, not an error)."""
    return (sample.status == 503 and sample.elapsed < FAIL_FAST_S and isinstance(sample.answer, dict)
            and sample.answer.get("status") == "degraded")


async def test_health_degrades_then_recovers_without_a_restart(outage: RedisOutage) -> None:
    during = outage.health.between(outage.down, outage.starting)
    print(f"health during the outage: {[s.status for s in during]}")
    assert during, "no health sample during the outage"
    for sample in during:
        assert sample.status == 503 and sample.elapsed < FAIL_FAST_S, sample
        assert sample.answer["status"] == "degraded"
        assert sample.answer["checks"]["redis"]["status"] == "fail"
        assert sample.answer["checks"]["postgres"]["status"] == "pass"
    healthy = outage.health.first(200, outage.starting)
    assert healthy is not None, "health stayed degraded after Redis returned"
    # Not stuck: a lone 503 after recovery is the stale-connection bug judged below.
    after = [s.status for s in outage.health.samples if s.started > healthy.started]
    assert after and after[-1] == 200, after
    assert all(not (a == b == 503) for a, b in itertools.pairwise(after)), after
    assert healthy.answer["status"] == "healthy"
    assert outage.server_pid_after == outage.server_pid_before != 0  # the same process all along


async def test_history_holds_every_accepted_message_once(outage: RedisOutage) -> None:
    check_history_holds_each_accepted_once(outage)


async def test_every_subscriber_gets_every_accepted_message_once(outage: RedisOutage) -> None:
    check_each_subscriber_got_each_accepted_once(outage)
