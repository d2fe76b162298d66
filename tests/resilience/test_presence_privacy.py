"""Presence never tells anyone without its key who is in a private room (issue 17).

An agent with a distinctive name sits in a private room and in a public one; a
second private-room member sets a status. Then, from outside: the REST roster and
a WebSocket subscribe without (or with a wrong) key are refused; the public room's
followers hear of the agent but never of the private room; /channels, /stats and
/metrics say nothing; and the server's log (production JSON at debug level, the
most it ever says) never names a member, nor ties the room to one. The viewer's
side is in tests/browser/test_viewer_presence.py.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.helpers import new_agent
from tests.presence_support import event, follower, listed


@pytest.fixture(scope="module")
def debug_server(start_module_server):
    return start_module_server(ENV="production", LOG_LEVEL="debug", PRESENCE_TTL="3", PRESENCE_GRACE="1")


async def test_private_room_presence_never_leaks(debug_server) -> None:
    token = secrets.token_hex(6)
    key = f"rk-{secrets.token_urlsafe(20)}"
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        member = await new_agent(http, f"secret-member-{token}")
        other = await new_agent(http, f"quiet-member-{token}")
        stranger = await new_agent(http, "stranger")
        private = await member.create_room(http, name=f"hidden-{token}", key=key)
        public = await stranger.create_room(http, name=f"open-{token}")
        private_id, public_id = private["id"], public["id"]

        async with follower(debug_server.ws_url, stranger) as outside, \
                follower(debug_server.ws_url, member) as m, follower(debug_server.ws_url, other) as o:
            await outside.subscribe(public_id, presence=True)
            await m.subscribe(private_id, key=key)
            await m.subscribe(public_id)
            await o.subscribe(private_id, key=key, presence=True)
            await outside.wait_for(event("join", public_id, member.id))
            assert (await o.request("status", status="busy", text=f"plotting {token}"))["type"] == "ok"
            assert (await m.request("status", status="thinking"))["type"] == "ok"
            await outside.wait_for(event("status", public_id, member.id))
            await o.wait_for(event("status", private_id, member.id))  # key holders do hear of it

            # REST: nothing without the key; everything with it.
            for headers in ({}, {"X-AICQ-Room-Key": "k" * 20}):
                refused = await http.get(f"/room/{private_id}/presence", headers=headers)
                assert refused.status_code == 403, refused.text
                assert member.id not in refused.text and other.id not in refused.text
            signed = await stranger.request(http, "GET", f"/room/{private_id}/presence")
            assert signed.status_code == 403
            allowed = await http.get(f"/room/{private_id}/presence", headers={"X-AICQ-Room-Key": key})
            assert listed(allowed.json()).keys() == {member.id, other.id}
            assert (await http.get(f"/room/hidden-{token}/presence")).status_code == 404  # no lookup by name

            # WebSocket: a subscribe without the key is refused before anything is said.
            async with follower(debug_server.ws_url) as prying:
                refused_ws = await prying.request("subscribe", room=private_id, presence=True)
                assert refused_ws["type"] == "error" and refused_ws["code"] == 403
                assert "presence" not in refused_ws
            # The public room's followers hear of the member, never of the private room.
            heard = [f for f in outside.frames if f.get("room") != public_id or private_id in str(f)]
            assert heard == [], heard
            assert all(other.id not in str(f) for f in outside.frames)

            # Lists and figures.
            channels = (await http.get("/channels", params={"limit": 100})).text
            stats = (await http.get("/stats")).text
            metrics = (await http.get("/metrics")).text
            for text in (channels, stats, metrics):
                assert private_id not in text and f"hidden-{token}" not in text
                assert member.id not in text and other.id not in text

    # The log: no member's name, no status text, and no line tying the room to a member.
    log = debug_server.log_text()
    assert f"secret-member-{token}" not in log and f"quiet-member-{token}" not in log
    assert f"plotting {token}" not in log
    for line in log.splitlines():
        if private_id in line:
            assert member.id not in line and other.id not in line, line
