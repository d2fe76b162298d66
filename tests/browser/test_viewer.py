"""The live viewer in a real Chromium against real server processes.

Debian's /usr/bin/chromium is driven by Playwright (no browser download); without
it the module is skipped. Screenshots for review go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.helpers import REPO, Agent, ServerProcess, new_agent, random_ip

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed at /usr/bin/chromium", allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api")

ARTIFACTS = REPO / "test-artifacts"
LIVE_MS = 1000  # a posted message must be on screen within this
RESUME_MS = 30000  # reconnect backoff (≤ 15 s) plus a server start


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        await browser.close()


class Viewer:
    """One page of the viewer, with everything it must never do recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.sent: list[dict] = []  # frames the page sent over /ws
        page.on("dialog", self._dialog)
        page.on("websocket", lambda ws: ws.on("framesent", self._sent))
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def _sent(self, payload: str | bytes) -> None:
        if isinstance(payload, str):
            self.sent.append(json.loads(payload))

    def subscribes(self, room_id: str) -> list[dict]:
        return [f for f in self.sent if f.get("op") == "subscribe" and f.get("room") == room_id]

    def _console(self, message: Any) -> None:
        # A CSP violation (inline style, eval, foreign origin) is a bug in the page.
        if message.type == "error" and (
            "Content Security Policy" in message.text or "Refused to" in message.text
        ):
            self.errors.append(f"console: {message.text}")

    async def open(self, base_url: str, room: str | None = None) -> None:
        await self.page.goto(f"{base_url}/" + (f"#/room/{room}" if room else ""))
        await self.wait_live()
        # Anything that reloads the page would drop this marker.
        await self.page.evaluate("window.__sameDocument = true")

    async def wait_live(self, timeout: float = 10000) -> None:
        await self.page.wait_for_selector(
            '#main[data-live="true"]', state="attached", timeout=timeout
        )

    def message(self, msg_id: str) -> Any:
        return self.page.locator(f'#feed .msg[data-id="{msg_id}"]')

    async def wait_message(self, msg_id: str, timeout: float = LIVE_MS) -> Any:
        await self.page.wait_for_selector(f'#feed .msg[data-id="{msg_id}"]', timeout=timeout)
        return self.message(msg_id)

    async def feed_ids(self) -> list[str]:
        return await self.page.eval_on_selector_all(
            "#feed .msg", "els => els.map(e => e.dataset.id)"
        )

    async def assert_same_document(self) -> None:
        assert await self.page.evaluate("window.__sameDocument === true"), "the page reloaded"

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        assert self.errors == [], self.errors


@pytest.fixture
async def viewer(browser: Any) -> AsyncIterator[Viewer]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    view = Viewer(page)
    yield view
    await context.close()
    view.assert_clean()


NAMES: dict[str, str] = {}  # agent id -> the name it registered with


async def named_agent(http: httpx.AsyncClient, prefix: str) -> Agent:
    name = f"{prefix}-{secrets.token_hex(3)}"
    agent = await new_agent(http, name)
    NAMES[agent.id] = name
    return agent


def agent_name(agent: Agent) -> str:
    return NAMES[agent.id]


async def room_with_agent(http: httpx.AsyncClient) -> tuple[Agent, dict]:
    agent = await named_agent(http, "viewer")
    room = await agent.create_room(http)
    return agent, room


async def post(agent: Agent, http: httpx.AsyncClient, room: str, body: str, **extra: Any) -> dict:
    response = await agent.post(http, room, body, **extra)
    assert response.status_code == 201, response.text
    return response.json()


# --- live updates ---------------------------------------------------------------------


async def test_posted_message_appears_live_without_reload(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    old = await post(agent, http, room["id"], "history before the page opened")
    await viewer.open(server.url, room["name"])
    await viewer.wait_message(old["id"], timeout=5000)

    started = time.monotonic()
    new = await post(agent, http, room["id"], "hello **live** viewer")
    shown = await viewer.wait_message(new["id"])
    assert time.monotonic() - started < 2.0  # the POST's own time plus the 1 s budget
    assert await shown.locator(".body").inner_text() == "hello live viewer"
    assert await shown.locator(".body strong").inner_text() == "live"
    # The agent's name comes from /who, looked up once.
    await shown.locator(".who", has_text=agent_name(agent)).wait_for(timeout=2000)
    await viewer.assert_same_document()
    assert await viewer.feed_ids() == [old["id"], new["id"]]


async def test_all_rooms_view_shows_messages_of_every_room(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, first = await room_with_agent(http)
    second = await agent.create_room(http)
    await viewer.open(server.url)
    a = await post(agent, http, first["id"], "in the first room")
    b = await post(agent, http, second["id"], "in the second room")
    shown_a = await viewer.wait_message(a["id"])
    shown_b = await viewer.wait_message(b["id"])
    assert await shown_a.locator(".room-tag").inner_text() == f"#{first['name']}"
    assert await shown_b.locator(".room-tag").inner_text() == f"#{second['name']}"
    # The room list counts them live too.
    link = viewer.page.locator(f'#rooms a[data-room="{first["id"]}"] .room-count')
    await link.filter(has_text=re.compile(r"^1$")).wait_for(timeout=LIVE_MS)


async def test_reply_shows_its_parent(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    other = await named_agent(http, "replier")
    parent = await post(agent, http, room["id"], "what is the `since` cursor for?")
    await viewer.open(server.url, room["name"])
    reply = await post(other, http, room["id"], "resuming without gaps", pid=parent["id"])
    shown = await viewer.wait_message(reply["id"])
    quote = shown.locator(".quote")
    assert await quote.get_attribute("data-pid") == parent["id"]
    assert "what is the since cursor for?" in await quote.inner_text()  # markers dropped
    await quote.locator(".who", has_text=agent_name(agent)).wait_for(timeout=2000)
    # Following the quote brings the parent into view.
    await quote.click()
    await viewer.page.wait_for_selector(f'.msg.flash[data-id="{parent["id"]}"]', timeout=2000)


async def test_deleted_message_vanishes_live(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    keep = await post(agent, http, room["id"], "this one stays")
    gone = await post(agent, http, room["id"], "this one will be deleted")
    await viewer.open(server.url, room["name"])
    await viewer.wait_message(gone["id"], timeout=5000)
    reply = await post(agent, http, room["id"], "a reply to the doomed one", pid=gone["id"])
    await viewer.wait_message(reply["id"])

    response = await agent.request(http, "DELETE", f"/room/{room['id']}/{gone['id']}")
    assert response.status_code == 204, response.text
    await viewer.page.wait_for_selector(
        f'#feed .msg[data-id="{gone["id"]}"]', state="detached", timeout=LIVE_MS
    )
    assert await viewer.feed_ids() == [keep["id"], reply["id"]]
    assert "deleted message" in await viewer.message(reply["id"]).locator(".quote").inner_text()
    await viewer.assert_same_document()


async def test_reconnects_after_restart_and_shows_what_was_missed(
    viewer: Viewer, server: ServerProcess, start_server: Any, http: httpx.AsyncClient
) -> None:
    # The page talks to its own instance; `server` shares the stores and keeps
    # accepting posts while that instance is down.
    instance: ServerProcess = await asyncio.to_thread(start_server)
    try:
        await resume_after_restart(viewer, instance, http)
    finally:
        await asyncio.to_thread(instance.stop)


async def resume_after_restart(
    viewer: Viewer, instance: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    doomed = await post(agent, http, room["id"], "deleted while the page is offline")
    before = await post(agent, http, room["id"], "before the restart")
    await viewer.open(instance.url, room["name"])
    await viewer.wait_message(before["id"], timeout=5000)
    assert await viewer.feed_ids() == [doomed["id"], before["id"]]

    await asyncio.to_thread(instance.stop)
    # State and text change together, and the wait can be short: look at both at once,
    # not in two round trips the next reconnect attempt can fall between.
    await viewer.page.wait_for_function(
        """() => document.querySelector('#conn').dataset.state === 'waiting'
                 && document.querySelector('#conn-text').innerText.includes('Offline')""",
        timeout=5000)
    missed = [await post(agent, http, room["id"], f"missed {i}") for i in range(3)]
    missed.append(await post(agent, http, room["id"], "a missed reply", pid=missed[0]["id"]))
    response = await agent.request(http, "DELETE", f"/room/{room['id']}/{doomed['id']}")
    assert response.status_code == 204, response.text

    await asyncio.to_thread(instance.start)
    for msg in missed:
        await viewer.wait_message(msg["id"], timeout=RESUME_MS)
    await viewer.page.wait_for_selector('#conn[data-state="open"]', timeout=5000)
    await viewer.wait_live()
    # A deletion is not replayed; the page rechecks the open room's recent history.
    await viewer.page.wait_for_selector(
        f'#feed .msg[data-id="{doomed["id"]}"]', state="detached", timeout=5000
    )
    after = await post(agent, http, room["id"], "after the restart")
    await viewer.wait_message(after["id"])

    # Nothing missed, nothing doubled, in order, and the page never reloaded.
    expected = [before["id"], *(m["id"] for m in missed), after["id"]]
    assert await viewer.feed_ids() == expected
    # They came back through the resume cursor: the newest message seen before.
    first, again = viewer.subscribes(room["id"])
    assert first["since"] == again["since"] == before["id"]
    assert "missed 0" in await viewer.message(missed[3]["id"]).locator(".quote").inner_text()
    await viewer.assert_same_document()


async def test_a_room_name_opens_the_room_the_server_resolves_it_to(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """Anyone may create another public room of a name and keep it busy; the viewer must
    still open the room the server gives that name (the oldest), never its own guess."""
    agent = await named_agent(http, "namer")
    name = f"dup-{secrets.token_hex(4)}"
    original = await agent.create_room(http, name)
    impostor = await agent.create_room(http, name)
    kept = await post(agent, http, original["id"], "in the original room")
    # The impostor is newer and busier: first of the two in the list.
    busy = [(await post(agent, http, impostor["id"], f"impostor {i}"))["id"] for i in range(3)]
    served = (await http.get(f"/room/{name}")).json()["room"]
    assert served == {"id": original["id"], "name": name}

    await viewer.open(server.url, name)
    await viewer.wait_message(kept["id"], timeout=5000)
    assert await viewer.feed_ids() == [kept["id"]]
    current = viewer.page.locator('#rooms a[aria-current="page"]')
    assert await current.get_attribute("data-room") == original["id"]
    # Links say what the server would open: the name for the room it names, the id otherwise.
    assert await current.get_attribute("href") == f"#/room/{name}"
    other = viewer.page.locator(f'#rooms a[data-room="{impostor["id"]}"]')
    assert await other.get_attribute("href") == f"#/room/{impostor['id']}"
    await other.click()  # and the impostor is still one click away, by its id
    await viewer.wait_message(busy[-1], timeout=5000)
    assert await viewer.feed_ids() == busy


async def test_a_refused_read_is_asked_again_after_retry_after(
    browser: Any, limited_server: ServerProcess, stores: tuple[str, str]
) -> None:
    """A 429 says how long to wait: the page waits that long and asks once more, rather
    than giving up or asking again at once (each refusal counts against an address
    that everyone behind the same NAT shares)."""
    ip = random_ip()
    # This address spent its 60 room-list reads a minute 58 s ago: about 2 s to wait.
    spent = aioredis.from_url(stores[1])
    now = int(time.time() * 1000)
    await spent.zadd(f"ratelimit:ip:{ip}:channels:60", {f"earlier-{i}": now - 58_000 for i in range(60)})
    await spent.aclose()
    context = await browser.new_context(extra_http_headers={"X-Test-Client-IP": ip})
    view = Viewer(await context.new_page())
    answers: list[tuple[int, str | None]] = []
    view.page.on("response", lambda r: answers.append((r.status, r.headers.get("retry-after")))
                 if "/channels" in r.url else None)
    await view.page.goto(f"{limited_server.url}/")
    await view.page.wait_for_selector("#rooms a.room:not(.all)", timeout=10000)
    assert [status for status, _ in answers] == [429, 200]
    assert 1 <= int(answers[0][1] or 0) <= 3
    assert await view.page.locator("#rooms-note").is_hidden()
    await context.close()
    view.assert_clean()


# --- safe rendering ---------------------------------------------------------------------

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "<script>alert(2)</script><b onmouseover=alert(3)>bold?</b>",
    "[click](JaVaScRiPt:alert(4)) [data](data:text/html,<script>alert(5)</script>) <a href=javascript:alert(6)>a</a>",
    "<svg onload=alert(7)></svg><iframe src=javascript:alert(8)></iframe>",
]


async def test_hostile_bodies_render_as_text(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    posted = [await post(agent, http, room["id"], body) for body in HOSTILE]
    safe = await post(
        agent, http, room["id"], "a [real link](https://example.com/x) and `<b>code</b>`"
    )
    await viewer.open(server.url, room["name"])
    late = await post(agent, http, room["id"], "<img src=x onerror=alert(9)> live")

    for msg, body in zip(
        [*posted, late], [*HOSTILE, "<img src=x onerror=alert(9)> live"], strict=True
    ):
        shown = await viewer.wait_message(msg["id"], timeout=5000)
        assert await shown.locator(".body").text_content() == body
    feed = viewer.page.locator("#feed")
    for selector in (
        "img",
        "script",
        "svg",
        "iframe",
        "b",
        '[href^="javascript" i]',
        "[onerror]",
        "[onload]",
    ):
        assert await feed.locator(selector).count() == 0, selector
    for msg in posted:
        assert await viewer.message(msg["id"]).locator("a").count() == 0
        await viewer.message(msg["id"]).locator(".body").click()  # a click runs nothing either

    link = viewer.message(safe["id"]).locator(".body a")
    assert await link.get_attribute("href") == "https://example.com/x"
    assert "noopener" in (await link.get_attribute("rel") or "")
    assert await viewer.message(safe["id"]).locator("code").inner_text() == "<b>code</b>"
    await viewer.page.wait_for_timeout(300)  # give any stray handler time to fire
    viewer.assert_clean()


async def test_renderer_allows_only_http_links(viewer: Viewer, server: ServerProcess) -> None:
    await viewer.page.goto(f"{server.url}/")
    cases = await viewer.page.evaluate(
        """async () => {
            const { parse, safeHref } = await import("/static/render.js");
            const links = (text) => JSON.stringify(parse(text)).match(/"href":"[^"]*"/g) ?? [];
            return {
                js: links("[x](javascript:alert(1))"),
                upper: links("[x](JAVASCRIPT:alert(1))"),
                spaced: links("[x]( javascript:alert(1))"),
                data: links("[x](data:text/html,hi)"),
                relative: links("[x](/room/global)"),
                http: links("[x](http://a.example/p)"),
                bare: links("see https://a.example/p?q=1."),
                paren: links("https://en.wikipedia.org/wiki/Foo_(bar)"),
                safeJs: safeHref("javascript:alert(1)"),
                safeHttps: safeHref("https://a.example"),
                snake: JSON.stringify(parse("snake_case_name")),
                bold: JSON.stringify(parse("**b** *i* `c`")),
            };
        }"""
    )
    assert (
        cases["js"] == cases["upper"] == cases["spaced"] == cases["data"] == cases["relative"] == []
    )
    assert cases["http"] == ['"href":"http://a.example/p"']
    assert cases["bare"] == ['"href":"https://a.example/p?q=1"']
    assert cases["paren"] == ['"href":"https://en.wikipedia.org/wiki/Foo_(bar)"']
    assert cases["safeJs"] is None and cases["safeHttps"] == "https://a.example/"
    assert '"t":"i"' not in cases["snake"]
    for tag in ('"t":"b"', '"t":"i"', '"t":"code"'):
        assert tag in cases["bold"]


# --- search, stats, layout -----------------------------------------------------------------


async def test_search_finds_and_opens_a_message(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    word = f"zq{secrets.token_hex(5)}"
    hit = await post(agent, http, room["id"], f"the word {word} is unique")
    await viewer.open(server.url)
    await viewer.page.get_by_label("Search public messages").fill(word)
    await viewer.page.get_by_role("button", name="Search", exact=True).click()
    result = viewer.page.locator("#results-list .result")
    await result.first.wait_for(timeout=5000)
    assert await result.count() == 1
    assert word in await result.first.locator(".body").inner_text()
    await result.first.get_by_role("button").click()
    await viewer.page.wait_for_selector(f'.msg.flash[data-id="{hit["id"]}"]', timeout=5000)
    assert await viewer.page.locator("#feed-title").inner_text() == f"#{room['name']}"


async def test_stats_and_connect_section(
    viewer: Viewer, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    stats = (await http.get("/stats")).json()
    await viewer.open(server.url)
    agents = viewer.page.locator("#stat-agents")
    await agents.filter(has_text=f"{stats['total_agents']:,}").wait_for(timeout=5000)
    curl = await viewer.page.locator("#curl-example").inner_text()
    python = await viewer.page.locator("#py-example").inner_text()
    assert f"curl -s {server.url}/room/global" in curl
    assert "pip install aicq" in python and "from aicq.client import Client" in python
    for control in ("Search public messages", "this room only"):
        assert await viewer.page.get_by_label(control).count() == 1, control


async def test_screenshots_wide_and_phone(
    browser: Any, server: ServerProcess, http: httpx.AsyncClient
) -> None:
    agent, room = await room_with_agent(http)
    other = await named_agent(http, "archivist")
    first = await post(
        agent,
        http,
        room["id"],
        "Morning, agents! **Bold**, *italic*, `code` and https://example.com/docs",
    )
    await post(
        other,
        http,
        room["id"],
        "Replying with a snippet:\n```python\nprint('hi')\n```",
        pid=first["id"],
    )
    await post(
        agent,
        http,
        room["id"],
        "<img src=x onerror=alert(1)> stays text, and so does [x](javascript:alert(1))",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        context = await browser.new_context(viewport={"width": width, "height": height})
        view = Viewer(await context.new_page())
        await view.open(server.url, room["name"])
        await view.page.wait_for_selector("#feed .msg >> nth=2", timeout=5000)
        await view.page.wait_for_timeout(300)  # names from /who
        await view.page.screenshot(path=str(ARTIFACTS / f"viewer-{width}x{height}.png"))
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert await view.page.evaluate("document.documentElement.scrollWidth") <= width
        await context.close()
        view.assert_clean()
