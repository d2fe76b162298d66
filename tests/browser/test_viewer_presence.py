"""Who is here, in the live viewer, in a real Chromium (issue 17).

The open room shows its agents with their status, kept live as agents join, change
status and leave; the room list shows how many agents each room has; names and
status texts are text, never markup; a private room shows nobody. Screenshots for
review go to test-artifacts/.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.browser.test_viewer import ARTIFACTS, Viewer, browser  # noqa: F401 - browser is a fixture
from tests.helpers import ServerProcess, new_agent
from tests.presence_support import follower

LIVE_MS = 3000  # a presence change on screen within this (leaves wait out the 1 s grace)


@pytest.fixture(scope="module")
def presence_server(start_module_server) -> ServerProcess:
    return start_module_server(PRESENCE_TTL="3", PRESENCE_GRACE="1")


@pytest.fixture
async def phttp(presence_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=presence_server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def viewer(browser: Any) -> AsyncIterator[Viewer]:  # noqa: F811
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    view = Viewer(await context.new_page())
    yield view
    await context.close()
    view.assert_clean()


def chip(viewer: Viewer, agent_id: str) -> Any:
    return viewer.page.locator(f'#here-list .member[data-agent="{agent_id}"]')


async def test_open_room_shows_who_is_here_live(viewer: Viewer, presence_server: ServerProcess, phttp) -> None:
    tag = secrets.token_hex(3)
    host = await new_agent(phttp, f"host-{tag}")
    guest = await new_agent(phttp, f"guest-{tag}")
    room = await host.create_room(phttp, name=f"lounge-{tag}")
    async with follower(presence_server.ws_url, host) as h:
        await h.subscribe(room["id"])
        await h.request("status", status="thinking", text="planning the release")

        await viewer.open(presence_server.url, room["name"])
        host_chip = chip(viewer, host.id)
        await host_chip.wait_for(timeout=LIVE_MS)
        assert await host_chip.get_attribute("data-status") == "thinking"
        assert await host_chip.locator(".who").inner_text() == f"host-{tag}"
        assert await host_chip.locator(".member-status").inner_text() == "thinking: planning the release"
        # The page itself is an anonymous reader of the room.
        await viewer.page.locator("#here-count", has_text="1 agent · 1 reader").wait_for(timeout=LIVE_MS)
        # The room list counted the host when it loaded.
        here = viewer.page.locator(f'#rooms a[data-room="{room["id"]}"] .room-here')
        assert await here.inner_text() == "1"

        async with follower(presence_server.ws_url, guest) as g:
            await g.subscribe(room["id"])
            await chip(viewer, guest.id).wait_for(timeout=LIVE_MS)
            await here.filter(has_text=re.compile(r"^2$")).wait_for(timeout=LIVE_MS)
            await g.request("status", status="busy", text="reading the logs")
            await viewer.page.locator(
                f'#here-list .member[data-agent="{guest.id}"][data-status="busy"]').wait_for(timeout=LIVE_MS)
            assert await chip(viewer, guest.id).locator(".member-status").inner_text() == "busy: reading the logs"
            ARTIFACTS.mkdir(exist_ok=True)
            await viewer.page.screenshot(path=str(ARTIFACTS / "viewer-presence-1280x800.png"))
            await viewer.page.set_viewport_size({"width": 390, "height": 844})
            await viewer.page.screenshot(path=str(ARTIFACTS / "viewer-presence-390x844.png"))
        await chip(viewer, guest.id).wait_for(state="detached", timeout=LIVE_MS)
        assert await chip(viewer, host.id).count() == 1
        await viewer.page.locator("#here-count", has_text="1 agent").wait_for(timeout=LIVE_MS)
    await viewer.assert_same_document()


async def test_names_and_status_texts_are_text(viewer: Viewer, presence_server: ServerProcess, phttp) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    agent = await new_agent(phttp, hostile)
    room = await agent.create_room(phttp)
    async with follower(presence_server.ws_url, agent) as a:
        await a.subscribe(room["id"])
        await a.request("status", status="away", text='<script>alert("x")</script>')
        await viewer.open(presence_server.url, room["name"])
        shown = chip(viewer, agent.id)
        await shown.wait_for(timeout=LIVE_MS)
        assert await shown.locator(".who").inner_text() == hostile
        assert await shown.locator(".member-status").inner_text() == 'away: <script>alert("x")</script>'
        assert await viewer.page.locator("#here img, #here script").count() == 0


async def test_all_rooms_view_hides_the_panel(viewer: Viewer, presence_server: ServerProcess, phttp) -> None:
    agent = await new_agent(phttp)
    room = await agent.create_room(phttp)
    async with follower(presence_server.ws_url, agent) as a:
        await a.subscribe(room["id"])
        await viewer.open(presence_server.url, room["name"])
        await chip(viewer, agent.id).wait_for(timeout=LIVE_MS)
        await viewer.page.click("#room-all")
        await viewer.page.locator("#here").wait_for(state="hidden", timeout=LIVE_MS)
        # Back in the room: a fresh roster comes with a fresh subscription.
        await viewer.page.click(f'#rooms a[data-room="{room["id"]}"]')
        await chip(viewer, agent.id).wait_for(timeout=LIVE_MS)


async def test_private_room_shows_nobody(viewer: Viewer, presence_server: ServerProcess, phttp) -> None:
    tag = secrets.token_hex(3)
    member = await new_agent(phttp, f"private-member-{tag}")
    key = f"rk-{secrets.token_urlsafe(20)}"
    private = await member.create_room(phttp, name=f"hidden-{tag}", key=key)
    async with follower(presence_server.ws_url, member) as m:
        await m.subscribe(private["id"], key=key)
        watched = await m.subscribe(private["id"], key=key, presence=True)
        assert [a["id"] for a in watched["presence"]["agents"]] == [member.id]
        await viewer.page.goto(f"{presence_server.url}/#/room/{private['id']}")
        await viewer.page.locator("#feed-notice, #feed-empty, .notice").first.wait_for(timeout=5000)
        await viewer.page.wait_for_load_state("networkidle")
        content = await viewer.page.content()
        assert f"private-member-{tag}" not in content and member.id not in content
        assert f"hidden-{tag}" not in content
        assert await viewer.page.locator("#here-list .member").count() == 0
        assert not [f for f in viewer.sent if f.get("op") == "subscribe" and f.get("room") == private["id"]]
