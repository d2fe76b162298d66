"""Privacy: a private room's text, its key and an agent's private key never leak.

Not through /find, /stats, /channels or room reads without the key; not over
WebSocket to a session without the key; and not into the server's logs, even at
LOG_LEVEL=debug in production (JSON) mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.helpers import Agent, new_agent, recv_json, recv_until
from tests.resilience.fuzz_support import figures  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def debug_server(start_module_server):
    """Production logging (JSON lines) at debug level: the most a log could ever say."""
    return start_module_server(ENV="production", LOG_LEVEL="debug")


@pytest.fixture(scope="module")
async def secrets_world(debug_server):
    """An owner with a private room holding distinctive text, and a public room as the control."""
    token = secrets.token_hex(8)
    world = {
        "secret_word": f"zq{token}",  # one search token: [a-z0-9]+
        "public_word": f"pw{token}",
        "room_key": f"rk-{secrets.token_urlsafe(24)}",
    }
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        owner = await new_agent(http, "private-owner")
        world["owner"] = owner
        world["private"] = await owner.create_room(http, name=f"hidden-{token}", key=world["room_key"])
        world["public"] = await owner.create_room(http, name=f"open-{token}")
        posted = await owner.request(http, "POST", f"/room/{world['private']['id']}",
                                     {"body": f"the {world['secret_word']} plan"},
                                     headers={"X-AICQ-Room-Key": world["room_key"]})
        assert posted.status_code == 201, posted.text
        posted = await owner.post(http, world["public"]["id"], f"the {world['public_word']} plan")
        assert posted.status_code == 201, posted.text
    return world


async def test_private_text_never_appears_in_public_reads(debug_server, secrets_world, figures) -> None:  # noqa: F811
    w = secrets_world
    private, public = w["private"], w["public"]
    checked: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        found = (await http.get("/find", params={"q": w["secret_word"]})).json()
        assert found["results"] == [] and found["total"] == 0, found
        control = (await http.get("/find", params={"q": w["public_word"]})).json()
        assert [r["room_id"] for r in control["results"]] == [public["id"]], control  # search does work
        scoped = await http.get("/find", params={"q": w["secret_word"], "room": private["id"]})
        assert scoped.status_code == 200 and scoped.json()["results"] == [], scoped.text
        assert w["secret_word"] not in scoped.text.replace(f'"query":"{w["secret_word"]}"', "")
        checked["/find"] = f"0 results (control: {control['total']}); room-scoped: {scoped.status_code}"

        stats = await http.get("/stats")
        assert stats.status_code == 200
        assert w["secret_word"] not in stats.text and private["id"] not in stats.text and private["name"] not in stats.text
        assert w["public_word"] in stats.text  # recent public messages are listed
        checked["/stats"] = "no text, id or name of the private room"

        listed: list[dict] = []
        for offset in range(0, 10_000, 100):
            page = (await http.get("/channels", params={"limit": 100, "offset": offset})).json()
            listed += page["channels"]
            if offset + 100 >= page["total"]:
                break
        ids = {c["id"] for c in listed}
        assert private["id"] not in ids and public["id"] in ids
        assert all(private["name"] != c["name"] for c in listed)
        checked["/channels"] = f"{len(listed)} public rooms, the private one absent"

        for headers in ({}, {"X-AICQ-Room-Key": "wrong-key-of-enough-length"},
                        {"X-AICQ-Room-Key": w["room_key"][:-1]}, {"X-AICQ-Room-Key": w["room_key"] + "x"}):
            denied = await http.get(f"/room/{private['id']}", headers=headers)
            assert denied.status_code == 403 and w["secret_word"] not in denied.text, (headers, denied.text)
        by_name = await http.get(f"/room/{private['name']}", headers={"X-AICQ-Room-Key": w["room_key"]})
        assert by_name.status_code == 404 and w["secret_word"] not in by_name.text  # names resolve public rooms only
        allowed = await http.get(f"/room/{private['id']}", headers={"X-AICQ-Room-Key": w["room_key"]})
        assert w["secret_word"] in allowed.text  # the key does open it
        checked["GET /room/{private}"] = "403 without/with a wrong key; 404 by name; 200 with the key"
    figures("privacy: public reads", checked)


async def test_private_events_never_reach_sessions_without_the_key(debug_server, secrets_world, figures) -> None:  # noqa: F811
    w = secrets_world
    private, public = w["private"]["id"], w["public"]["id"]
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        outsider = await new_agent(http, "outsider")
        recipient = await new_agent(http, "recipient")
        async with connect(debug_server.ws_url) as anonymous, connect(debug_server.ws_url) as signed_in, \
                connect(debug_server.ws_url) as insider:
            for ws in (anonymous, signed_in, insider):
                await recv_json(ws)
            await signed_in.send(orjson.dumps(outsider.auth_frame("a")).decode())
            assert (await recv_until(signed_in, lambda f: f.get("ref") == "a"))["type"] == "ok"
            refusals = {}
            for ws, name in ((anonymous, "anonymous"), (signed_in, "signed-in outsider")):
                for ref, key in (("nokey", None), ("wrong", "wrong-key-of-enough-length")):
                    frame = {"op": "subscribe", "room": private, "ref": ref, **({"key": key} if key else {})}
                    await ws.send(orjson.dumps(frame).decode())
                    answer = await recv_until(ws, lambda f, ref=ref: f.get("ref") == ref)
                    assert answer["type"] == "error" and answer["code"] == 403, answer
                    refusals[f"{name}, {ref}"] = answer["code"]
                await ws.send(orjson.dumps({"op": "subscribe", "room": public, "ref": "pub"}).decode())
                assert (await recv_until(ws, lambda f: f.get("ref") == "pub"))["type"] == "ok"
                await ws.send(orjson.dumps({"op": "subscribe", "room": "global", "ref": "glob"}).decode())
                assert (await recv_until(ws, lambda f: f.get("ref") == "glob"))["type"] == "ok"
            await insider.send(orjson.dumps({"op": "subscribe", "room": private, "key": w["room_key"],
                                             "ref": "in"}).decode())
            assert (await recv_until(insider, lambda f: f.get("ref") == "in"))["type"] == "ok"

            whisper = f"whisper {w['secret_word']} {secrets.token_hex(4)}"
            posted = await w["owner"].request(http, "POST", f"/room/{private}", {"body": whisper},
                                              headers={"X-AICQ-Room-Key": w["room_key"]})
            assert posted.status_code == 201
            dm = base64.b64encode(secrets.token_bytes(80)).decode()
            sent = await w["owner"].request(http, "POST", f"/dm/{recipient.id}", {"body": dm})
            assert sent.status_code == 201
            marker = f"marker {secrets.token_hex(4)}"
            assert (await w["owner"].post(http, public, marker)).status_code == 201

            # The insider gets the whisper; the others see the public marker and nothing before it
            # (events of one publisher reach a session in order).
            got = await recv_until(insider, lambda f: f.get("type") == "message", timeout=5)
            assert got["msg"]["body"] == whisper
            seen = {}
            for ws, name in ((anonymous, "anonymous"), (signed_in, "signed-in outsider")):
                frames = []

                async def until_marker(ws=ws, frames=frames) -> None:
                    while True:
                        frame = await recv_json(ws)
                        frames.append(frame)
                        if frame.get("type") == "message" and frame["msg"]["body"] == marker:
                            return

                await asyncio.wait_for(until_marker(), 5)
                text = json.dumps(frames)
                assert w["secret_word"] not in text and private not in text and dm not in text, frames
                seen[name] = f"{len(frames)} frames up to the marker, none private"
    figures("privacy: WebSocket", {**{f"subscribe refused ({k})": v for k, v in refusals.items()}, **seen})


def _leaks(log: str, secrets_by_name: dict[str, str], window: int = 8) -> dict[str, list[str]]:
    """Log lines holding any ``window``-character piece of a secret (a debug logger may elide the rest)."""
    lines = log.splitlines()
    found: dict[str, list[str]] = {}
    for what, secret in secrets_by_name.items():
        pieces = {secret[i:i + window] for i in range(max(1, len(secret) - window + 1))}
        hits = [line for line in lines if any(piece in line for piece in pieces)]
        if hits:
            found[what] = [hit[:300] for hit in hits[:3]]
    return found


def _key_forms(agent: Agent) -> dict[str, str]:
    raw = agent.key.private_bytes_raw()
    return {"agent private key (base64)": base64.b64encode(raw).decode(),
            "agent private key (urlsafe base64)": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "agent private key (hex)": raw.hex()}


async def test_rest_traffic_leaves_no_secret_in_the_log(debug_server, secrets_world, figures) -> None:  # noqa: F811
    """Every REST path a private room's key and text travel, then the debug log is read."""
    room_key = secrets.token_urlsafe(24)
    word = f"zr{secrets.token_hex(10)}"
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        owner = await new_agent(http, "rest-owner")
        room = await owner.create_room(http, key=room_key)
        keyed = {"X-AICQ-Room-Key": room_key}
        assert (await owner.request(http, "POST", f"/room/{room['id']}", {"body": f"a {word} b"},
                                    headers=keyed)).status_code == 201
        assert (await owner.request(http, "POST", f"/room/{room['id']}", {"body": f"a {word} b"})).status_code == 403
        assert word in (await http.get(f"/room/{room['id']}", headers=keyed)).text
        assert (await http.get(f"/room/{room['id']}", headers={"X-AICQ-Room-Key": room_key[::-1]})).status_code == 403
        assert (await http.get("/find", params={"q": word})).json()["total"] == 0
        assert (await owner.request(http, "POST", "/room", {"name": "x", "is_private": True, "key": room_key,
                                                            "junk": word})).status_code in (201, 400)
    secrets_by_name = {"room key": room_key, "private text": word, **_key_forms(owner), **_key_forms(secrets_world["owner"])}
    log = debug_server.log_text()
    lines = log.splitlines()
    leaks = _leaks(log, secrets_by_name)
    figures("privacy: server log after REST traffic (ENV=production, LOG_LEVEL=debug)", {
        "log lines": len(lines),
        "debug lines": sum('"level":"debug"' in line for line in lines),
        **{f"lines with an 8-char piece of the {what}": len(leaks.get(what, [])) for what in secrets_by_name},
    })
    assert lines and all(line.startswith("{") for line in lines), "not a JSON log"
    assert any('"message":"request completed"' in line for line in lines), "the log recorded nothing"
    assert not leaks, leaks


async def test_ws_frames_leave_no_secret_in_the_log(debug_server, figures) -> None:  # noqa: F811
    room_key = secrets.token_hex(8)  # 16 characters, the shortest key allowed
    word = f"zw{secrets.token_hex(7)}"
    async with httpx.AsyncClient(base_url=debug_server.url, timeout=10) as http:
        owner = await new_agent(http, "ws-owner")
        room = (await owner.create_room(http, key=room_key))["id"]
    async with connect(debug_server.ws_url) as ws:
        await recv_json(ws)
        await ws.send(orjson.dumps(owner.auth_frame("a")).decode())
        assert (await recv_until(ws, lambda f: f.get("ref") == "a"))["type"] == "ok"
        # Field order is the client's choice; these put the secret last.
        await ws.send(orjson.dumps({"op": "subscribe", "ref": "s", "room": room, "key": room_key}).decode())
        assert (await recv_until(ws, lambda f: f.get("ref") == "s"))["type"] == "ok"
        await ws.send(orjson.dumps({"op": "post", "ref": "p", "room": room, "key": room_key, "body": word}).decode())
        assert (await recv_until(ws, lambda f: f.get("ref") == "p"))["type"] == "ok"
    leaks = _leaks(debug_server.log_text(), {"room key": room_key, "private text": word})
    figures("privacy: server log after WS frames (ENV=production, LOG_LEVEL=debug)",
            {f"lines with an 8-char piece of the {what}": len(leaks.get(what, [])) for what in ("room key", "private text")})
    assert not leaks, leaks
