"""Query parameters read as the Go handlers read them (issue 11.1, docs/COMPATIBILITY.md).

Pure rules first (values in, values out), then each endpoint over real HTTP with the
edge values agents send: 0, -1, huge, non-numeric, empty and repeated.
"""

from __future__ import annotations

import base64
import os
import secrets

import httpx
import pytest
from starlette.datastructures import QueryParams

from aicq.edge import query
from tests.helpers import new_agent

HUGE = "99999999999999999999"  # past int64: Go's strconv fails, so the default applies


@pytest.mark.parametrize("raw, value", [
    ("5", 5), ("+5", 5), ("-1", -1), ("0", 0), ("9223372036854775807", (1 << 63) - 1),
    (HUGE, None), ("", None), ("x", None), ("5x", None), (" 5", None), ("٣", None), ("5_0", None), ("1.5", None),
])
def test_go_int(raw: str, value: int | None) -> None:
    assert query.go_int(raw) == value


@pytest.mark.parametrize("qs, expected", [
    ("", 20), ("limit=", 20), ("limit=0", 20), ("limit=-1", 20), ("limit=x", 20), (f"limit={HUGE}", 20),
    ("limit=7", 7), ("limit=100", 100), ("limit=101", 100), ("limit=1000", 100),
    ("limit=9223372036854775807", 100), ("limit=3&limit=50", 3),
])
def test_limit(qs: str, expected: int) -> None:
    assert query.limit(QueryParams(qs), 20, 100) == expected


@pytest.mark.parametrize("qs, expected", [
    ("", 0), ("offset=-1", 0), ("offset=x", 0), ("offset=5", 5), (f"offset={HUGE}", 0), ("offset=2&offset=9", 2),
])
def test_offset(qs: str, expected: int) -> None:
    assert query.offset(QueryParams(qs)) == expected


@pytest.mark.parametrize("qs, expected", [
    ("", None), ("after=", None), ("after=x", None), ("after=-5", None), ("after=0", None),
    ("after=1700000000000", 1700000000000), (f"after={HUGE}", None), ("after=9223372036854775807", (1 << 53) - 1),
])
def test_after(qs: str, expected: int | None) -> None:
    assert query.after_ms(QueryParams(qs)) == expected


@pytest.mark.parametrize("qs, expected", [
    ("", None), ("before=yesterday", None), ("before=-1", None), ("before=12", 12),
    ("before=01arz3ndektsv4rrffq69g5fav", "01ARZ3NDEKTSV4RRFFQ69G5FAV"), ("before=ZZZZZZZZZZZZZZZZZZZZZZZZZZ", None),
])
def test_before(qs: str, expected: int | str | None) -> None:
    assert query.before_cursor(QueryParams(qs)) == expected


@pytest.fixture
async def busy_room(http: httpx.AsyncClient) -> tuple[str, list[dict]]:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    posted = [(await agent.post(http, room, f"m{i}")).json() for i in range(3)]
    return room, posted


@pytest.mark.parametrize("value, count", [
    ("0", 3), ("-1", 3), ("x", 3), ("", 3), (HUGE, 3), ("1000", 3), ("2", 2), ("1.5", 3),
])
async def test_room_limit_edges(http: httpx.AsyncClient, busy_room: tuple[str, list[dict]], value: str,
                                count: int) -> None:
    room, _ = busy_room
    response = await http.get(f"/room/{room}", params={"limit": value})
    assert response.status_code == 200
    assert len(response.json()["messages"]) == count


async def test_room_limit_clamps_to_200(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    for i in range(205):
        assert (await agent.post(http, room, f"n{i}")).status_code == 201
    page = (await http.get(f"/room/{room}", params={"limit": "1000"})).json()
    assert len(page["messages"]) == 200 and page["has_more"] is True


@pytest.mark.parametrize("value", ["yesterday", "-1", "0", HUGE, ""])
async def test_room_unparsable_before_reads_the_newest(http: httpx.AsyncClient, busy_room: tuple[str, list[dict]],
                                                       value: str) -> None:
    room, posted = busy_room
    page = (await http.get(f"/room/{room}", params={"before": value})).json()
    assert [m["id"] for m in page["messages"]] == [p["id"] for p in reversed(posted)]


async def test_repeated_parameters_take_the_first(http: httpx.AsyncClient, busy_room: tuple[str, list[dict]]) -> None:
    room, posted = busy_room
    page = (await http.get(f"/room/{room}?limit=1&limit=3")).json()
    assert [m["id"] for m in page["messages"]] == [posted[-1]["id"]]
    page = (await http.get(f"/room/{room}?before={posted[1]['id']}&before={posted[2]['id']}")).json()
    assert [m["id"] for m in page["messages"]] == [posted[0]["id"]]


@pytest.mark.parametrize("params", [
    {"limit": "1000"}, {"limit": "0"}, {"limit": "-1"}, {"limit": "x"}, {"limit": HUGE}, {"offset": "-1"},
    {"offset": "x"}, {"offset": HUGE}, {"offset": "100000000000"},
])
async def test_channels_never_refuse_parameters(http: httpx.AsyncClient, params: dict) -> None:
    response = await http.get("/channels", params=params)
    assert response.status_code == 200
    assert len(response.json()["channels"]) <= 100


async def test_channels_limit_clamps_to_100(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    for _ in range(101 - (await http.get("/channels")).json()["total"]):
        await agent.create_room(http)
    assert len((await http.get("/channels", params={"limit": "1000"})).json()["channels"]) == 100
    assert len((await http.get("/channels", params={"limit": "0"})).json()["channels"]) == 20


@pytest.mark.parametrize("params", [
    {"after": "x"}, {"after": "-1"}, {"after": HUGE}, {"limit": "0"}, {"limit": "x"}, {"limit": "1000"},
])
async def test_find_tolerates_what_go_tolerated(http: httpx.AsyncClient, params: dict) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    word = f"tolerant{secrets.token_hex(4)}"
    posted = (await agent.post(http, room, word)).json()
    response = await http.get("/find", params={"q": word, **params})
    assert response.status_code == 200
    assert [r["id"] for r in response.json()["results"]] == [posted["id"]]


async def test_find_room_filter_names_nothing_it_does_not_return(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    key = secrets.token_hex(10)
    private = await agent.create_room(http, key=key)
    word = f"hidden{secrets.token_hex(4)}"
    sent = await agent.post(http, private["id"], word)
    assert sent.status_code == 403  # no key: nothing stored
    unknown = "6b1f0d5e-0000-4000-8000-000000000000"
    answers = [await http.get("/find", params={"q": word, "room": ref})
               for ref in (private["id"], unknown, "no-such-room-name")]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.text.replace(private["id"], "ID").replace(unknown, "ID").replace("no-such-room-name", "ID")
            for a in answers} == {answers[0].text.replace(private["id"], "ID")}
    assert (await http.get("/find", params={"q": word, "room": "not a room!"})).status_code == 400


async def test_find_room_filter_by_name_and_id(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = await agent.create_room(http)
    word = f"filtered{secrets.token_hex(4)}"
    posted = (await agent.post(http, room["id"], word)).json()
    for ref in (room["id"], room["name"]):
        results = (await http.get("/find", params={"q": word, "room": ref})).json()["results"]
        assert [r["id"] for r in results] == [posted["id"]]


@pytest.mark.parametrize("value, count", [("0", 3), ("-1", 3), ("x", 3), ("1000", 3), ("2", 2), (HUGE, 3)])
async def test_dm_limit_edges(http: httpx.AsyncClient, value: str, count: int) -> None:
    alice, bob = await new_agent(http, "alice"), await new_agent(http, "bob")
    for _ in range(3):
        body = {"body": base64.b64encode(os.urandom(64)).decode()}
        assert (await alice.request(http, "POST", f"/dm/{bob.id}", body)).status_code == 201
    inbox = await bob.request(http, "GET", "/dm", params={"limit": value})
    assert inbox.status_code == 200 and len(inbox.json()["messages"]) == count
