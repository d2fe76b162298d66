"""``aicq who-is-here``, ``aicq status`` and ``aicq tail --presence``, as processes against a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from .helpers import cli, unique
from .test_cli import Tail, _register


async def test_status_who_is_here_and_tail_presence(server: Any, tmp_path: Path) -> None:
    me, other = tmp_path / "me", tmp_path / "other"
    my_name = unique("present ")
    my_id = await _register(server, me, my_name)
    await _register(server, other)
    room = unique("here")
    assert (await cli(server.url, me, "create-room", room)).rc == 0

    offline = await cli(server.url, me, "status", "busy", "reading the logs")
    assert offline.rc == 1 and "no live session" in offline.err

    empty = await cli(server.url, other, "who-is-here", room)
    assert empty.rc == 0 and "no agents in" in empty.out

    # A tail with credentials is a live session of the agent: it is in the room.
    tail = await Tail.start(server, me, room, "--presence", "--json")
    try:
        roster = orjson.loads(await tail.line())
        assert roster["type"] == "presence" and [a["id"] for a in roster["agents"]] == [my_id]

        done = await cli(server.url, me, "status", "busy", "reading the logs", "--ttl", "600", "--json")
        assert done.rc == 0, done.err
        assert done.json() == {"status": "busy", "text": "reading the logs", "ttl": 600}
        changed = orjson.loads(await tail.line())
        assert changed == {"type": "status", "room": roster["room"],
                           "agent": {"id": my_id, "status": "busy", "text": "reading the logs"}}

        listed = await cli(server.url, other, "who-is-here", room, "--json")
        assert listed.rc == 0, listed.err
        (entry,) = listed.json()["agents"]  # type: ignore[index]
        assert (entry["id"], entry["name"], entry["status"]) == (my_id, my_name, "busy")
        human = await cli(server.url, other, "who-is-here", room)
        assert my_name in human.out and "busy: reading the logs" in human.out
        assert "1 agent in" in human.out

        bad = await cli(server.url, me, "status", "busy", "x" * 65)
        assert bad.rc == 1 and "64 characters" in bad.err
    finally:
        rc, err = await tail.interrupt()
    assert rc == 0 and "Traceback" not in err
