"""Registration, profiles, channels, rooms and messages through real HTTP (SPEC §4)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets

import httpx
import pytest

from tests.helpers import Agent, new_agent, settled_message_count

GLOBAL = "00000000-0000-0000-0000-000000000001"


async def test_register_creates_then_returns_existing(http: httpx.AsyncClient) -> None:
    agent = Agent()
    first = await http.post("/register", json={"public_key": agent.public_key, "name": "  Bob\x07  "})
    assert first.status_code == 201
    body = first.json()
    assert body["profile_url"] == f"/who/{body['id']}"
    again = await http.post("/register", json={"public_key": agent.public_key})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    profile = (await http.get(f"/who/{body['id']}")).json()
    assert profile["name"] == "Bob" and profile["public_key"] == agent.public_key
    assert profile["joined_at"].endswith("Z")


async def test_concurrent_duplicate_registration_yields_one_agent(http: httpx.AsyncClient) -> None:
    key = Agent().public_key
    responses = await asyncio.gather(*[http.post("/register", json={"public_key": key}) for _ in range(10)])
    assert sorted(r.status_code for r in responses).count(201) == 1
    assert len({r.json()["id"] for r in responses}) == 1


@pytest.mark.parametrize("payload, status", [
    ({"public_key": base64.b64encode(os.urandom(31)).decode()}, 400),
    ({"public_key": "not base64!!"}, 400),
    ({"public_key": 42}, 400),
    ({}, 400),
    ({"public_key": base64.b64encode(os.urandom(32)).decode(), "email": "nope"}, 400),
    ({"public_key": base64.b64encode(os.urandom(32)).decode(), "name": ["x"]}, 400),
])
async def test_register_rejects_bad_input(http: httpx.AsyncClient, payload: dict, status: int) -> None:
    response = await http.post("/register", json=payload)
    assert response.status_code == status
    assert response.json()["error"]


async def test_long_name_is_truncated(http: httpx.AsyncClient) -> None:
    agent = Agent()
    response = await http.post("/register", json={"public_key": agent.public_key, "name": "n" * 300})
    profile = (await http.get(f"/who/{response.json()['id']}")).json()
    assert profile["name"] == "n" * 100


async def test_who_errors(http: httpx.AsyncClient) -> None:
    assert (await http.get("/who/not-a-uuid")).status_code == 400
    missing = await http.get("/who/7f1c2d3e-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.json() == {"error": "agent not found"}


async def test_create_room_and_read_by_id_and_name(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    name = f"lobby-{secrets.token_hex(4)}"
    room = await agent.create_room(http, name)
    assert room["name"] == name and room["is_private"] is False
    posted = await agent.post(http, name, "hello by name")
    assert posted.status_code == 201 and sorted(posted.json()) == ["id", "ts"]  # the Go response
    by_id = (await http.get(f"/room/{room['id']}")).json()
    by_name = (await http.get(f"/room/{name}")).json()
    assert by_id == by_name
    assert by_id["messages"][0]["body"] == "hello by name"
    assert await settled_message_count(http, room["id"], 1) == 1
    channels = (await http.get("/channels", params={"limit": 100})).json()
    listed = next(c for c in channels["channels"] if c["id"] == room["id"])
    assert channels["channels"][0]["last_active"] >= listed["last_active"]


async def test_global_room_by_name(http: httpx.AsyncClient) -> None:
    response = await http.get("/room/global")
    assert response.json()["room"] == {"id": GLOBAL, "name": "global"}


async def test_unknown_room_is_404(http: httpx.AsyncClient) -> None:
    for ref in ("no-such-room-xyz", "7f1c2d3e-0000-4000-8000-000000000000", "%E2%98%83"):
        response = await http.get(f"/room/{ref}")
        assert response.status_code == 404 and response.json() == {"error": "room not found"}


@pytest.mark.parametrize("data", [
    {"name": "has space"}, {"name": ""}, {"name": "x" * 51}, {"name": 7},
    {"name": "secret", "is_private": True}, {"name": "secret", "is_private": True, "key": "short"},
    {"name": "ok", "is_private": "yes"},
])
async def test_bad_room_creation_is_400(http: httpx.AsyncClient, data: dict) -> None:
    agent = await new_agent(http)
    response = await agent.request(http, "POST", "/room", data)
    assert response.status_code == 400, response.text


async def test_private_room_needs_key(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key = secrets.token_hex(12)
    room = await agent.create_room(http, key=key)
    assert room["is_private"] is True
    assert (await agent.post(http, room["id"], "psst")).status_code == 403
    assert (await agent.post(http, room["id"], "psst", ) ).json()["error"]
    ok = await agent.request(http, "POST", f"/room/{room['id']}", {"body": "psst"},
                             headers={"X-AICQ-Room-Key": key})
    assert ok.status_code == 201
    assert (await http.get(f"/room/{room['id']}")).status_code == 403
    assert (await http.get(f"/room/{room['id']}", headers={"X-AICQ-Room-Key": "wrong" * 4})).status_code == 403
    read = await http.get(f"/room/{room['id']}", headers={"X-AICQ-Room-Key": key})
    assert read.json()["messages"][0]["body"] == "psst"
    # A private room is never reachable by name.
    assert (await http.get(f"/room/{room['name']}", headers={"X-AICQ-Room-Key": key})).status_code == 404


async def test_message_validation(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    assert (await agent.post(http, room, "")).status_code == 400
    assert (await agent.request(http, "POST", f"/room/{room}", {"body": 5})).status_code == 400
    assert (await agent.post(http, room, "é" * 2048)).status_code == 201  # 4096 bytes
    assert (await agent.post(http, room, "é" * 2048 + "x")).status_code == 422
    assert (await agent.post(http, room, "reply", pid="01ARZ3NDEKTSV4RRFFQ69G5FAV")).status_code == 422
    assert (await agent.post(http, room, "reply", pid="garbage")).status_code == 422


async def test_reply_pid_must_be_in_same_room(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room_a = (await agent.create_room(http))["id"]
    room_b = (await agent.create_room(http))["id"]
    parent = (await agent.post(http, room_a, "parent")).json()
    assert (await agent.post(http, room_b, "reply", pid=parent["id"])).status_code == 422
    reply = await agent.post(http, room_a, "reply", pid=parent["id"])
    assert reply.status_code == 201
    newest = (await http.get(f"/room/{room_a}", params={"limit": 1})).json()["messages"][0]
    assert newest["pid"] == parent["id"] and newest["from"] == agent.id


async def test_paging_by_id_returns_each_message_once(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    posted = await asyncio.gather(*[agent.post(http, room, f"m{i}") for i in range(25)])
    ids = {r.json()["id"] for r in posted}
    seen: list[str] = []
    before = None
    while True:
        params = {"limit": 4, **({"before": before} if before else {})}
        page = (await http.get(f"/room/{room}", params=params)).json()
        seen += [m["id"] for m in page["messages"]]
        keys = [(m["ts"], m["id"]) for m in page["messages"]]
        assert keys == sorted(keys, reverse=True)
        if not page["has_more"]:
            break
        before = page["messages"][-1]["id"]
    assert len(seen) == len(set(seen)) == 25 and set(seen) == ids


async def test_paging_by_ms_is_exclusive(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    first = (await agent.post(http, room, "first")).json()
    await agent.post(http, room, "second")
    page = (await http.get(f"/room/{room}", params={"before": first["ts"]})).json()
    assert all(m["ts"] < first["ts"] for m in page["messages"])
    page = (await http.get(f"/room/{room}", params={"before": first["ts"] + 1})).json()
    assert first["id"] in [m["id"] for m in page["messages"]]
