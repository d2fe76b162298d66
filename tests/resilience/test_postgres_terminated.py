"""PostgreSQL cuts a post's count update short, after the message was stored (issue 12.9).

By the time ``rooms.message_count`` is updated, the message is stored and published:
the post must answer 201, or the client retries and the message appears twice. The
update itself must not be retried blindly either (it may have committed): the change
is parked and applied later, once. Two ways the server cuts it short, on the real
PostgreSQL of the run:

- the "server went away" errors of class 57, 57P01 (``AdminShutdownError``, what
  ``pg_ctl stop -m fast`` sends every session) and its siblings, raised by a trigger
  on the test's room;
- ``pg_terminate_backend`` on the server's connection while its update waits for the
  room's row: asyncpg reports that as a connection closed mid-statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.helpers import Agent, new_agent

WAIT_S = 4.0  # the server's statement gives up after 5 s: stay under it
COUNT_SETTLE_S = 10.0


@pytest.fixture
async def database(stores: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the server's database."""
    conn = await asyncpg.connect(stores[0])
    try:
        yield conn
    finally:
        await conn.close()


async def _room(http: httpx.AsyncClient) -> tuple[Agent, str]:
    agent = await new_agent(http, "cut-short")
    return agent, (await agent.create_room(http))["id"]


async def _check_stored_once_and_counted(http: httpx.AsyncClient, database: asyncpg.Connection,
                                         room: str, response: httpx.Response) -> None:
    print(f"{response.status_code} {response.text}")
    assert response.status_code == 201, response.text
    stored = (await http.get(f"/room/{room}")).json()["messages"]
    assert [m["id"] for m in stored] == [response.json()["id"]]
    assert await _settled_count(database, room, 1) == 1  # parked, then applied once


async def _settled_count(database: asyncpg.Connection, room: str, expected: int) -> int:
    """The room's message_count once it equals ``expected``, or after COUNT_SETTLE_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COUNT_SETTLE_S
    while True:
        count = await database.fetchval("SELECT message_count FROM rooms WHERE id = $1::uuid", room)
        if count == expected or loop.time() >= deadline:
            return count
        await asyncio.sleep(0.2)  # polling: the reconciler offers nothing to wait on


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03"])
async def test_a_count_update_refused_as_the_server_goes_away_still_answers_201(
        http: httpx.AsyncClient, database: asyncpg.Connection, sqlstate: str) -> None:
    agent, room = await _room(http)
    trigger = f"aicq_test_refuse_{room.replace('-', '')}"
    await database.execute(f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the server goes away' USING ERRCODE = '{sqlstate}'; END $$;
        CREATE TRIGGER {trigger} BEFORE UPDATE OF message_count ON rooms
        FOR EACH ROW WHEN (OLD.id = '{room}') EXECUTE FUNCTION {trigger}();
    """)
    try:
        response = await agent.post(http, room, f"stored, then {sqlstate}")
    finally:
        await database.execute(f"DROP TRIGGER {trigger} ON rooms; DROP FUNCTION {trigger}();")
    await _check_stored_once_and_counted(http, database, room, response)


async def _waiting_count_update(database: asyncpg.Connection) -> int:
    """The backend whose message_count update waits for the row the test holds."""
    async with asyncio.timeout(WAIT_S):
        while True:
            pid = await database.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE rooms SET message_count%'")
            if pid is not None:
                return pid
            await asyncio.sleep(0.02)  # polling: PostgreSQL offers nothing to wait on


async def test_a_count_update_whose_backend_is_terminated_answers_201_and_is_not_rerun(
        http: httpx.AsyncClient, stores: tuple[str, str], database: asyncpg.Connection) -> None:
    """A blind retry would wait for the row we hold (and count twice, had the first run
    committed): the post would hang until we let go. It must answer at once."""
    agent, room = await _room(http)
    holder = await asyncpg.connect(stores[0])
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM rooms WHERE id = $1::uuid FOR UPDATE", room)
            post = asyncio.create_task(agent.post(http, room, "stored, then terminated"))
            assert await database.fetchval("SELECT pg_terminate_backend($1)", await _waiting_count_update(database))
            response = await asyncio.wait_for(post, WAIT_S)
    finally:
        await holder.close()
    await _check_stored_once_and_counted(http, database, room, response)
