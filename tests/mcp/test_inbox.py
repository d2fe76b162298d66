"""The inbox behind wait_for_messages, in process, with tiny logs: what overflows is read back."""

from __future__ import annotations

import asyncio

from aicq.client.mcp.cursor import START, Cursor
from aicq.client.mcp.inbox import Inbox
from aicq.client.models import Room
from tests.client.helpers import new_agent, unique
from tests.helpers import ServerProcess
from tests.mcp.helpers import WAIT


async def test_positions_below_a_full_log_are_read_from_the_server(server: ServerProcess) -> None:
    owner, poster = await new_agent(server.url), await new_agent(server.url)
    inbox = Inbox(owner, capacity=3)
    inbox.start()
    try:
        name = unique("small")
        created = await poster.create_room(name)
        room = Room(created.id, name)
        await asyncio.wait_for(inbox.follow(room, START), WAIT)
        posted = [(await poster.post(name, f"m{i}")).id for i in range(8)]
        me = owner.credentials.require_id()
        sent = [(await poster.send_dm(me, f"d{i}")).id for i in range(4)]

        # Once the last of each has arrived, the logs hold only the newest three.
        newest = await inbox.wait([room.id], dms=False, cursor=None, timeout=WAIT, limit=100)
        while posted[-1] not in [m.id for m in newest.messages]:
            newest = await inbox.wait([room.id], dms=False, cursor=newest.cursor, timeout=WAIT, limit=100)
        batch = await inbox.wait([], dms=True, cursor=Cursor(dm=START), timeout=WAIT, limit=100)
        while sent[-1] not in [d.id for d in batch.dms]:
            batch = await inbox.wait([], dms=True, cursor=batch.cursor, timeout=WAIT, limit=100)

        everything = await inbox.wait(
            [room.id], dms=True, cursor=Cursor({room.id: START}, dm=START), timeout=0, limit=100
        )
        assert [m.id for m in everything.messages] == posted
        assert [d.id for d in everything.dms] == sent and [d.text for d in everything.dms][0] == "d0"
        assert everything.gaps == [] and not everything.more

        # A limit cuts the oldest first and says more are waiting; the cursor resumes after the cut.
        first = await inbox.wait([room.id], dms=False, cursor=Cursor({room.id: START}), timeout=0, limit=5)
        assert [m.id for m in first.messages] == posted[:5] and first.more
        rest = await inbox.wait([room.id], dms=False, cursor=first.cursor, timeout=0, limit=5)
        assert [m.id for m in rest.messages] == posted[5:] and not rest.more
    finally:
        await inbox.close()
        await owner.aclose()
        await poster.aclose()
