"""Checking that a webhook delivery came from the AICQ server, on the receiving side.

The server signs each delivery the way agents sign requests (``aicq.signing``):
Ed25519 over ``sha256_hex(body)|X-AICQ-Delivery|X-AICQ-Timestamp``, with its own key,
published at ``GET /.well-known/aicq-webhook-key`` (and ``GET /api``). So::

    from aicq.client import verify_webhook

    event = verify_webhook(server_key, raw_body, request.headers)  # raises if forged or stale
    delivery = request.headers["X-AICQ-Delivery"]
    if delivery not in handled:
        handled.add(delivery)
        handle(event)

Delivery is at least once: the same delivery id can arrive twice (a retry whose
first answer was lost, an instance that died mid-delivery). Keep the ids you have
handled for longer than ``max_age_s`` and skip repeats.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

import orjson

from aicq.client.errors import WebhookSignatureError
from aicq.signing import verify

DEFAULT_MAX_AGE_S = 300.0
FUTURE_SKEW_S = 30.0
HEADERS = ("X-AICQ-Delivery", "X-AICQ-Timestamp", "X-AICQ-Signature")


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # a plain dict may spell it in any case
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    if not value:
        raise WebhookSignatureError(f"missing {name} header")
    return value


def verify_webhook(
    public_key: str | bytes,
    body: bytes,
    headers: Mapping[str, str],
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The event a webhook delivery carries, once its signature and age are checked.

    Args:
        public_key: the server's webhook key (standard base64, or the 32 raw bytes).
        body: the request body exactly as received (before any JSON parsing).
        headers: the request headers (any mapping; names are case-insensitive).
        max_age_s: refuse a delivery signed longer ago than this (a replay).
        now: the current unix time in seconds (for tests).

    Returns:
        The event: ``{"type": "dm" | "mention" | "message", ...}``, as on the WebSocket.

    Raises:
        WebhookSignatureError: a header is missing, the signature is not the
            server's, or the timestamp is too old or too far ahead.
    """
    delivery = _header(headers, "X-AICQ-Delivery")
    timestamp = _header(headers, "X-AICQ-Timestamp")
    signature = _header(headers, "X-AICQ-Signature")
    key = public_key
    if isinstance(key, str):
        try:
            key = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSignatureError("the public key is not standard base64") from None
    if len(key) != 32:
        raise WebhookSignatureError("the public key must be 32 bytes")
    if not verify(key, body, delivery, timestamp, signature):
        raise WebhookSignatureError("signature does not match: not a delivery from this server")
    try:
        signed_at = int(timestamp) / 1000
    except ValueError:
        raise WebhookSignatureError("X-AICQ-Timestamp must be unix milliseconds") from None
    current = time.time() if now is None else now
    if signed_at < current - max_age_s:
        raise WebhookSignatureError(f"delivery signed {current - signed_at:.0f} s ago: too old")
    if signed_at > current + FUTURE_SKEW_S:
        raise WebhookSignatureError("delivery signed in the future: check this machine's clock")
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise WebhookSignatureError("body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookSignatureError("body is not a JSON object")
    return event
