"""Presence across instances and through faults (issue 17).

Two real instances share PostgreSQL and Redis; each runs with PRESENCE_TTL=3 (a
lease of 2 s, renewed and checked every second) and a 2 s grace period, so the
bounds are quick to observe:

- presence is one roster, whichever instance a reader or a viewer is on;
- an instance SIGKILLed takes its members with it within PRESENCE_TTL;
- an agent whose instance shuts down (1012) and who resumes on the other one
  never seems to leave;
- Redis restarting empty: the roster is written again within one renewal period.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import httpx
import pytest

from aicq.client import AsyncClient, Credentials, Roster
from tests.helpers import RedisProcess, ServerProcess, new_agent
from tests.presence_support import event, follower, listed

TTL_S = 3
GRACE_S = 2
PERIOD_S = TTL_S / 3
SLACK_S = 1.5  # event delivery, process scheduling on a busy 2-core machine


def _instance(start_server, **env: str) -> ServerProcess:
    return start_server(PRESENCE_TTL=str(TTL_S), PRESENCE_GRACE=str(GRACE_S), **env)


@pytest.fixture(scope="module")
def pair(start_module_server) -> tuple[ServerProcess, ServerProcess]:
    return _instance(start_module_server), _instance(start_module_server)


async def _roster(url: str, room: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.get(f"/room/{room}/presence")
        assert response.status_code == 200, response.text
        return response.json()


async def test_presence_is_one_roster_seen_from_both_instances(pair) -> None:
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        owner, guest = await new_agent(http, "on-a"), await new_agent(http, "on-b")
        room = (await owner.create_room(http))["id"]
    async with follower(b.ws_url, guest) as watcher, follower(a.ws_url, owner) as on_a, \
            follower(a.ws_url) as reader_a, follower(b.ws_url) as reader_b:
        assert on_a.hello["instance"] != watcher.hello["instance"]
        await watcher.subscribe(room, presence=True)
        await on_a.subscribe(room)
        joined = await watcher.wait_for(event("join", room, owner.id))  # published on A, seen on B
        assert joined["agent"]["name"] == "on-a"
        await reader_a.subscribe(room)
        await reader_b.subscribe(room)
        from_a, from_b = await _roster(a.url, room), await _roster(b.url, room)
        assert listed(from_a).keys() == listed(from_b).keys() == {owner.id, guest.id}
        assert from_a["readers"] == from_b["readers"] == 2
        answer = await on_a.request("status", status="thinking", text="on instance A")
        assert answer["type"] == "ok"
        changed = await watcher.wait_for(event("status", room, owner.id))
        assert changed["agent"]["text"] == "on instance A"
        assert listed(await _roster(b.url, room))[owner.id]["status"] == "thinking"


async def test_a_killed_instance_takes_its_members_within_the_ttl(start_server) -> None:
    victim, survivor = _instance(start_server), _instance(start_server)
    async with httpx.AsyncClient(base_url=survivor.url, timeout=10) as http:
        doomed, staying = await new_agent(http, "doomed"), await new_agent(http, "staying")
        room = (await staying.create_room(http))["id"]
    async with follower(survivor.ws_url, staying) as watcher, follower(victim.ws_url, doomed) as on_victim, \
            follower(victim.ws_url) as reader:
        await watcher.subscribe(room, presence=True)
        await on_victim.subscribe(room)
        await reader.subscribe(room)
        await watcher.wait_for(event("join", room, doomed.id))
        assert (await _roster(survivor.url, room))["readers"] == 1
        killed = time.monotonic()
        victim.stop(signal.SIGKILL)
        await watcher.wait_for(event("leave", room, doomed.id), timeout=TTL_S + SLACK_S)
        gone_after = time.monotonic() - killed
        print(f"\nSIGKILL → leave published after {gone_after:.2f} s (bound: PRESENCE_TTL = {TTL_S} s)")
        roster = await _roster(survivor.url, room)
        assert listed(roster).keys() == {staying.id} and roster["readers"] == 0
        assert watcher.presence_events(room, but=staying.id) == [("join", doomed.id), ("leave", doomed.id)]


async def test_resuming_on_another_instance_after_1012_is_not_a_leave(start_server) -> None:
    leaving, staying = _instance(start_server), _instance(start_server)
    async with httpx.AsyncClient(base_url=staying.url, timeout=10) as http:
        mover, marker, host = await new_agent(http, "mover"), await new_agent(http, "marker"), await new_agent(http)
        room = (await host.create_room(http))["id"]
    credentials = Credentials(mover.key, mover.id)
    async with follower(staying.ws_url, host) as watcher, \
            AsyncClient(leaving.url, credentials) as client:
        await watcher.subscribe(room, presence=True)
        # With presence, the stream yields a Roster each time a connection subscribes.
        stream = client.stream([room], urls=[leaving.url, staying.url], identify=True, presence=True)
        subscribed = [asyncio.Event(), asyncio.Event()]

        async def consume() -> None:
            rosters = 0
            async for item in stream:
                if isinstance(item, Roster) and rosters < len(subscribed):
                    subscribed[rosters].set()
                    rosters += 1

        consumer = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(subscribed[0].wait(), 10)
            await watcher.wait_for(event("join", room, mover.id))
            leaving.stop(signal.SIGTERM)  # closes every session with 1012
            await asyncio.wait_for(subscribed[1].wait(), 10)
            assert stream.hello is not None and stream.hello["instance"] == watcher.hello["instance"]
            # Someone who really leaves, after the mover came back: its leave falls due later.
            async with follower(staying.ws_url, marker) as m:
                await m.subscribe(room)
                await watcher.wait_for(event("join", room, marker.id))
            await watcher.wait_for(event("leave", room, marker.id), timeout=GRACE_S + SLACK_S + PERIOD_S)
            assert watcher.presence_events(room, but=host.id) == [
                ("join", mover.id), ("join", marker.id), ("leave", marker.id)]
            assert mover.id in listed(await _roster(staying.url, room))
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await stream.aclose()


async def test_presence_is_written_again_after_redis_restarts_empty(start_server, tmp_path_factory) -> None:
    redis = RedisProcess(tmp_path_factory.mktemp("redis-a")).start()
    try:
        server = _instance(start_server, REDIS_URL=redis.url)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            agent = await new_agent(http, "survivor-of-a-flush")
            room = (await agent.create_room(http))["id"]
        async with follower(server.ws_url, agent) as session, follower(server.ws_url) as reader:
            await session.subscribe(room)
            followed = (await reader.subscribe(room, presence=True))["presence"]
            assert agent.id in listed(await _roster(server.url, room))
            redis.stop()
            redis = RedisProcess(tmp_path_factory.mktemp("redis-b"), port=redis.port).start()  # no data
            back = time.monotonic()
            async with asyncio.timeout(PERIOD_S + 5 + SLACK_S):  # reconnect backoff, then one period
                while True:
                    try:
                        roster = await _roster(server.url, room)
                    except AssertionError:  # 503 while the pool reconnects
                        roster = {"agents": [], "readers": 0}
                    if agent.id in listed(roster) and roster["readers"] == 1:
                        break
                    await asyncio.sleep(0.1)
            print(f"\nRedis back empty → presence written again after {time.monotonic() - back:.2f} s")
            assert listed(roster)[agent.id]["name"] == "survivor-of-a-flush"
            # The reader's session followed presence through it all: it was told again.
            await reader.until_present(room, followed, {agent.id}, timeout=5 + SLACK_S)
            assert any(f.get("type") == "presence" for f in reader.frames), reader.frames
    finally:
        redis.stop()
