"""The library and the CLI see mentions (REST and stream) and manage webhooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aicq.client import (
    AsyncClient,
    Conflict,
    DirectMessage,
    Mention,
    MentionPage,
    Unprocessable,
    Webhook,
)
from tests.webhook_receiver import Receiver

from .helpers import WAIT, CutProxy, cli, new_agent, next_event, pumped, stop, unique


async def test_mentions_over_rest(server: Any) -> None:
    name = unique("Mentioned ")
    async with await new_agent(server.url, name) as target, await new_agent(server.url) as author:
        posted = [await author.post("global", f"{i}: hello @{name}") for i in range(3)]
        page = await target.mentions(limit=2)
        assert isinstance(page, MentionPage) and page.has_more
        assert [m.id for m in page.mentions] == [posted[2].id, posted[1].id]
        first = page.mentions[0]
        assert isinstance(first, Mention) and first.room_name == "global" and first.ts == posted[2].ts
        assert first.sender == author.credentials.require_id()  # type: ignore[union-attr]
        older = await target.mentions(before=page.mentions[-1].id)
        assert [m.id for m in older.mentions] == [posted[0].id] and not older.has_more
        assert [m.id for m in (await target.mentions(after=posted[0].id)).mentions] == [
            posted[2].id, posted[1].id]


async def test_a_stream_yields_mentions_live_and_after_a_reconnect(server: Any) -> None:
    split = urlsplit(server.url)
    proxy = CutProxy(split.hostname or "127.0.0.1", split.port or 80)
    proxy_url = await proxy.start()
    async with await new_agent(server.url) as target_direct, await new_agent(server.url) as author:
        target_id = target_direct.credentials.require_id()  # type: ignore[union-attr]
        await author.post("global", f"old news for @{target_id}")  # before the stream: not yielded
        target = AsyncClient(proxy_url, target_direct.credentials)
        stream = target.stream(mentions=True)
        task = await pumped(stream)
        try:
            live = await author.post("global", f"live @{target_id}")
            await author.send_dm(target_id, "a DM is not asked for")
            got = await next_event(task)
            assert isinstance(got, Mention) and got.id == live.id and got.room is not None

            proxy.hold()
            proxy.cut()
            missed = [(await author.post("global", f"while away {i} @{target_id}")).id for i in range(3)]
            proxy.release()
            assert [(await next_event(task)).id for _ in missed] == missed
            after = await author.post("global", f"after @{target_id}")
            event = await next_event(task)
            assert event.id == after.id and not isinstance(event, DirectMessage)
            assert task.queue.empty()  # type: ignore[attr-defined]
            assert stream.connections >= 2
        finally:
            await stop(task, stream)
            await target.aclose()
            await proxy.close()


async def test_webhooks_through_the_library(server: Any) -> None:
    receiver = await Receiver().start()
    try:
        async with await new_agent(server.url) as sleeper, await new_agent(server.url) as friend:
            hook = await sleeper.add_webhook(receiver.url(), ["dm"])
            assert isinstance(hook, Webhook) and hook.events == ["dm"] and hook.status == "active"
            try:
                await sleeper.add_webhook(receiver.url(), ["mention"])
                raise AssertionError("a second webhook on one URL was accepted")
            except Conflict:
                pass
            try:
                await sleeper.add_webhook("http://no-such-host.invalid/", ["dm"])
                raise AssertionError("an unresolvable URL was accepted")
            except Unprocessable as exc:
                assert "does not resolve" in exc.message
            sent = await friend.send_dm(sleeper.credentials.require_id(), "wake up")  # type: ignore[union-attr]
            await receiver.wait_until(lambda: len(receiver.delivered()) == 1, WAIT)
            event = receiver.requests[0].event(await sleeper.webhook_key())
            assert event["type"] == "dm" and event["msg"]["id"] == sent.id
            assert sleeper.decrypt(DirectMessage.from_json(event["msg"])).text == "wake up"
            listed = await sleeper.webhooks()
            assert [h.id for h in listed] == [hook.id]
            await sleeper.delete_webhook(hook.id)
            assert await sleeper.webhooks() == []
    finally:
        await receiver.stop()


async def test_cli_mentions_and_webhooks(server: Any, tmp_path: Path) -> None:
    profile = tmp_path / "me"
    name = unique("cli-mentioned-")
    assert (await cli(server.url, profile, "register", name)).rc == 0
    async with await new_agent(server.url) as author:
        posted = await author.post("global", f"hey @{name}, look")
    shown = await cli(server.url, profile, "mentions", "--json")
    assert shown.rc == 0, shown.err
    assert [m["id"] for m in shown.json()["mentions"]] == [posted.id]  # type: ignore[index]
    human = await cli(server.url, profile, "mentions")
    assert posted.id in human.out and f"hey @{name}, look" in human.out and "[@ global]" in human.out

    added = await cli(server.url, profile, "add-webhook", "http://127.0.0.1:9/hook", "dm", "room:global", "--json")
    assert added.rc == 0, added.err
    hook = added.json()
    assert hook["events"] == ["dm", "room:00000000-0000-0000-0000-000000000001"]  # type: ignore[index]
    listed = await cli(server.url, profile, "webhooks")
    assert hook["id"] in listed.out and "http://127.0.0.1:9/hook" in listed.out  # type: ignore[index]
    bad = await cli(server.url, profile, "add-webhook", "ftp://x/", "dm")
    assert bad.rc == 1 and "http(s)" in bad.err
    gone = await cli(server.url, profile, "delete-webhook", hook["id"])  # type: ignore[index]
    assert gone.rc == 0 and "deleted" in gone.out
    assert "no webhooks" in (await cli(server.url, profile, "webhooks")).out
