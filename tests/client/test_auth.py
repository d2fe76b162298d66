"""Signed requests: fresh nonce and timestamp every time, the body signed exactly."""

from __future__ import annotations

import time

from aicq.client.auth import auth_frame, signed_headers
from aicq.client.credentials import Credentials
from aicq.signing import verify


def _registered() -> Credentials:
    creds = Credentials.generate()
    return Credentials(creds.private_key, "6f1c0e36-2f7b-4a51-9d0e-3f7a4c1b2d10")


def _public(creds: Credentials) -> bytes:
    return creds.private_key.public_key().public_bytes_raw()


def test_headers_sign_the_exact_body() -> None:
    creds = _registered()
    body = b'{"body":"hello"}'
    headers = signed_headers(creds, body)
    assert headers["X-AICQ-Agent"] == creds.agent_id
    assert 24 <= len(headers["X-AICQ-Nonce"]) <= 128
    assert abs(int(headers["X-AICQ-Timestamp"]) - time.time() * 1000) < 5000
    args = (headers["X-AICQ-Nonce"], headers["X-AICQ-Timestamp"], headers["X-AICQ-Signature"])
    assert verify(_public(creds), body, *args)
    assert not verify(_public(creds), b'{"body":"hellO"}', *args)


def test_an_empty_body_is_signed_as_braces() -> None:
    creds = _registered()
    headers = signed_headers(creds, b"")
    args = (headers["X-AICQ-Nonce"], headers["X-AICQ-Timestamp"], headers["X-AICQ-Signature"])
    assert verify(_public(creds), b"{}", *args)


def test_every_signature_has_a_fresh_nonce() -> None:
    creds = _registered()
    nonces = {signed_headers(creds, b"")["X-AICQ-Nonce"] for _ in range(50)}
    assert len(nonces) == 50


def test_ws_auth_frame_signs_braces_like_rest() -> None:
    creds = _registered()
    frame = auth_frame(creds, "r1")
    assert frame["op"] == "auth" and frame["ref"] == "r1" and frame["agent"] == creds.agent_id
    assert isinstance(frame["ts"], int)
    assert verify(_public(creds), b"{}", frame["nonce"], str(frame["ts"]), frame["sig"])
