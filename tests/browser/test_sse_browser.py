"""A browser's own EventSource against GET /events: resume across a server restart
with nothing but the Last-Event-ID it sends by itself (Chromium via Playwright)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.browser.test_viewer import browser  # noqa: F401 - the Chromium fixture
from tests.helpers import ServerProcess, new_agent

RESUME_MS = 30000  # EventSource retries every 1-3 s (the retry: we send) plus a server start

# The page's CSP forbids eval, so no wait_for_function: the listeners resolve waiters.
LISTEN = """
(path) => {
  const sse = window.__sse = { messages: [], ready: [], waiters: [] };
  const notify = () => {
    sse.waiters = sse.waiters.filter((w) => sse[w.kind].length >= w.count ? (w.resolve(sse[w.kind]), false) : true);
  };
  sse.until = (kind, count) => new Promise((resolve) => { sse.waiters.push({ kind, count, resolve }); notify(); });
  const source = new EventSource(path);
  source.addEventListener("message", (e) => {
    sse.messages.push({ lastEventId: e.lastEventId, id: JSON.parse(e.data).msg.id });
    notify();
  });
  source.addEventListener("ready", (e) => { sse.ready.push(JSON.parse(e.data)); notify(); });
  window.__source = source;
}
"""


async def _until(page: Any, kind: str, count: int) -> list[dict]:
    """The page's list of ``kind`` once it holds ``count`` entries."""
    return await asyncio.wait_for(
        page.evaluate("([kind, count]) => window.__sse.until(kind, count)", [kind, count]), RESUME_MS / 1000)


async def test_event_source_resumes_across_a_restart(
        browser: Any, server: ServerProcess, start_server: Any, http: httpx.AsyncClient) -> None:  # noqa: F811
    # The page streams from its own instance; `server` shares the stores and takes
    # posts while that instance is down.
    instance: ServerProcess = await asyncio.to_thread(start_server)
    page = await browser.new_page()
    try:
        agent = await new_agent(http)
        room = await agent.create_room(http)
        await page.goto(f"{instance.url}/")  # the viewer's origin: its CSP allows connect-src 'self'
        await page.evaluate(LISTEN, f"/events?rooms={room['name']}")
        await _until(page, "ready", 1)
        before = [(await agent.post(http, room["id"], f"before {i}")).json()["id"] for i in range(2)]
        assert [m["id"] for m in await _until(page, "messages", 2)] == before

        await asyncio.to_thread(instance.stop)
        missed = [(await agent.post(http, room["id"], f"missed {i}")).json()["id"] for i in range(3)]
        await asyncio.to_thread(instance.start)
        await _until(page, "ready", 2)
        after = (await agent.post(http, room["id"], "after")).json()["id"]
        got = await _until(page, "messages", 6)

        assert [m["id"] for m in got] == [*before, *missed, after]  # none missed, none twice, in order
        assert [m["lastEventId"] for m in got] == [m["id"] for m in got]
        first, again = await page.evaluate("window.__sse.ready")
        assert first["replayed"] == 0 and again["replayed"] == 3 and again["recovered"] is True
        assert await page.evaluate("window.__source.readyState") == 1  # OPEN
    finally:
        await page.close()
        await asyncio.to_thread(instance.stop)
