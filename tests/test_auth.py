"""Signed requests (SPEC §3): the pure checks, then every failure through HTTP."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import orjson
import pytest

from aicq import auth, signing
from aicq.errors import Unauthorized
from tests.helpers import Agent, new_agent


def test_signing_payload_signs_empty_body_as_braces() -> None:
    assert signing.signing_payload(b"", "n", "1") == signing.signing_payload(b"{}", "n", "1")
    assert signing.signing_payload(b"{}", "n" * 24, "5").decode() == (
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a|" + "n" * 24 + "|5"
    )


@pytest.mark.parametrize("values, reason", [
    ((None, "n" * 24, "1", "s"), "missing authentication headers"),
    (("not-a-uuid", "n" * 24, "1", "s"), "invalid agent id"),
    (("7f1c2d3e-0000-4000-8000-000000000000", "short", "1", "s"), "nonce must be 24-128 characters"),
    (("7f1c2d3e-0000-4000-8000-000000000000", "n" * 129, "1", "s"), "nonce must be 24-128 characters"),
])
def test_credentials_shape(values: tuple, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        auth.credentials(*values)


@pytest.mark.parametrize("offset_ms, ok", [(0, True), (-29_000, True), (-31_000, False), (4_000, True), (6_000, False)])
def test_timestamp_window(offset_ms: int, ok: bool) -> None:
    now = 1_700_000_000_000
    if ok:
        auth.check_timestamp(str(now + offset_ms), now)
    else:
        with pytest.raises(Unauthorized):
            auth.check_timestamp(str(now + offset_ms), now)


@pytest.mark.parametrize("raw", ["abc", "", "1e9", "-5", "١٢٣", "9" * 40])
def test_malformed_timestamp(raw: str) -> None:
    with pytest.raises(Unauthorized):
        auth.check_timestamp(raw, 1_700_000_000_000)


async def _post_room(http: httpx.AsyncClient, headers: dict[str, str], body: bytes) -> httpx.Response:
    return await http.post("/room", content=body, headers=headers)


async def test_each_auth_failure_is_401(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    body = orjson.dumps({"name": f"r-{secrets.token_hex(4)}"})
    good = agent.headers(body)
    cases = {
        "missing": {k: v for k, v in good.items() if k != "X-AICQ-Signature"},
        "bad timestamp": {**agent.headers(body), "X-AICQ-Timestamp": "soon"},
        "old": agent.headers(body, ts=int(time.time() * 1000) - 31_000),
        "future": agent.headers(body, ts=int(time.time() * 1000) + 60_000),
        "short nonce": agent.headers(body, nonce="x" * 23),
        "unknown agent": {**good, "X-AICQ-Agent": "7f1c2d3e-0000-4000-8000-000000000000"},
        "bad signature": {**agent.headers(body), "X-AICQ-Signature": agent.headers(b"{}")["X-AICQ-Signature"]},
        "garbage signature": {**agent.headers(body), "X-AICQ-Signature": "%%%"},
        "other key": {**Agent(id=agent.id).headers(body)},
    }
    for name, headers in cases.items():
        response = await _post_room(http, headers, body)
        assert response.status_code == 401, name
        assert response.json()["error"], name
    assert (await _post_room(http, good, body)).status_code == 201


async def test_small_future_skew_is_tolerated(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    body = orjson.dumps({"name": f"r-{secrets.token_hex(4)}"})
    headers = agent.headers(body, ts=int(time.time() * 1000) + 3_000)
    assert (await _post_room(http, headers, body)).status_code == 201


async def test_nonce_is_single_use_and_atomic(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    room = (await agent.create_room(http))["id"]
    body = orjson.dumps({"body": "once"})
    headers = agent.headers(body)
    responses = await asyncio.gather(*[
        http.post(f"/room/{room}", content=body, headers=headers) for _ in range(20)
    ])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [401] * 19
    assert {r.json()["error"] for r in responses if r.status_code == 401} == {"nonce already used"}


async def test_failed_signature_does_not_burn_the_nonce(http: httpx.AsyncClient) -> None:
    victim = await new_agent(http)
    room = (await victim.create_room(http))["id"]
    body = orjson.dumps({"body": "mine"})
    headers = victim.headers(body)
    forged = {**headers, "X-AICQ-Signature": Agent().headers(body)["X-AICQ-Signature"]}
    assert (await http.post(f"/room/{room}", content=body, headers=forged)).status_code == 401
    assert (await http.post(f"/room/{room}", content=body, headers=headers)).status_code == 201


async def test_signed_get_signs_empty_body(http: httpx.AsyncClient) -> None:
    agent = await new_agent(http)
    response = await http.get("/dm", headers=agent.headers(b""))
    assert response.status_code == 200
    response = await http.get("/dm", headers=agent.headers(b"{}"))
    assert response.status_code == 200
