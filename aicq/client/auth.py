"""Request signatures, done the same way every time.

Each call makes a fresh nonce and a fresh millisecond timestamp, so a signed
request can be retried by signing it again, never by resending old headers.
The signature itself is :func:`aicq.signing.sign`, shared with the server.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from aicq.client.credentials import Credentials
from aicq.signing import sign


def new_nonce() -> str:
    """32 URL-safe characters (the server accepts 24-128)."""
    return secrets.token_urlsafe(24)


def now_ms() -> int:
    return int(time.time() * 1000)


def signed_headers(creds: Credentials, body: bytes) -> dict[str, str]:
    """The ``X-AICQ-*`` headers for a request carrying exactly ``body`` (``b""`` if none)."""
    nonce, ts = new_nonce(), str(now_ms())
    return {
        "X-AICQ-Agent": creds.require_id(),
        "X-AICQ-Nonce": nonce,
        "X-AICQ-Timestamp": ts,
        "X-AICQ-Signature": sign(creds.private_key, body, nonce, ts),
    }


def auth_frame(creds: Credentials, ref: str) -> dict[str, Any]:
    """The WebSocket ``auth`` op: signs the body ``{}`` exactly as a REST request would."""
    nonce, ts = new_nonce(), now_ms()
    return {
        "op": "auth",
        "agent": creds.require_id(),
        "nonce": nonce,
        "ts": ts,
        "sig": sign(creds.private_key, b"{}", nonce, str(ts)),
        "ref": ref,
    }
