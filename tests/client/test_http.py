"""The REST layer's own rules: re-signing, 429 backoff, typed errors.

The server's answers are scripted with ``httpx.MockTransport`` because a real
server cannot be made to answer 429 on cue without blocking the test IP.
"""

from __future__ import annotations

import json

import httpx
import pytest

from aicq.client import (
    AsyncClient,
    Credentials,
    NotFound,
    RateLimited,
    TransportError,
    Unprocessable,
)
from aicq.client.errors import APIError, ServerError

AGENT = "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10"


def _client(handler: httpx.MockTransport, **options: float) -> AsyncClient:
    creds = Credentials(Credentials.generate().private_key, AGENT)
    return AsyncClient("http://aicq.test", creds, transport=handler, **options)


async def test_429_is_retried_after_retry_after_with_a_fresh_signature() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return httpx.Response(
                429, json={"error": "rate limit exceeded"}, headers={"Retry-After": "0"}
            )
        return httpx.Response(201, json={"id": "01ABC", "ts": 1700000000000})

    async with _client(httpx.MockTransport(answer)) as client:
        posted = await client.post("global", "hi")
    assert posted.id == "01ABC"
    assert len(seen) == 3
    assert len({r.headers["X-AICQ-Nonce"] for r in seen}) == 3
    assert all(json.loads(r.content) == {"body": "hi"} for r in seen)
    assert all(r.headers["Content-Type"] == "application/json" for r in seen)


async def test_retries_are_bounded() -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            429, json={"error": "rate limit exceeded"}, headers={"Retry-After": "0"}
        )

    async with _client(httpx.MockTransport(answer), max_retries=2) as client:
        with pytest.raises(RateLimited) as caught:
            await client.channels()
    assert calls == 3
    assert caught.value.status == 429 and caught.value.message == "rate limit exceeded"


async def test_a_long_retry_after_is_not_waited_for() -> None:
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            429, json={"error": "rate limit exceeded"}, headers={"Retry-After": "3600"}
        )

    async with _client(httpx.MockTransport(answer), max_retry_wait=5) as client:
        with pytest.raises(RateLimited) as caught:
            await client.register("x")
    assert calls == 1 and caught.value.retry_after == 3600


async def test_errors_carry_status_and_server_message() -> None:
    answers = {
        "/room/nope": httpx.Response(404, json={"error": "room not found"}),
        "/room/global": httpx.Response(422, json={"error": "body too long"}),
        "/find": httpx.Response(502, text="bad gateway"),
        "/stats": httpx.Response(418, json={"error": "teapot"}),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return answers[request.url.path]

    async with _client(httpx.MockTransport(answer)) as client:
        with pytest.raises(NotFound, match="room not found"):
            await client.read("nope")
        with pytest.raises(Unprocessable) as caught:
            await client.post("global", "x" * 5000)
        assert (caught.value.status, caught.value.message) == (422, "body too long")
        with pytest.raises(ServerError, match="bad gateway"):
            await client.find("hello")
        with pytest.raises(APIError) as other:
            await client.stats()
        assert other.value.status == 418


async def test_signed_get_sends_no_body_and_signs_braces() -> None:
    from aicq.signing import verify

    creds = Credentials(Credentials.generate().private_key, AGENT)
    captured: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, json={"messages": []})

    async with AsyncClient(
        "http://aicq.test", creds, transport=httpx.MockTransport(answer)
    ) as client:
        assert await client.inbox() == []
    request = captured[0]
    assert request.content == b""
    public = creds.private_key.public_key().public_bytes_raw()
    h = request.headers
    assert verify(public, b"{}", h["X-AICQ-Nonce"], h["X-AICQ-Timestamp"], h["X-AICQ-Signature"])


async def test_unreachable_server_is_a_transport_error() -> None:
    async with AsyncClient("http://127.0.0.1:9") as client:
        with pytest.raises(TransportError):
            await client.channels()
