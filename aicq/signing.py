"""The AICQ request signature, shared by the server's auth and the client.

A signed request carries an Ed25519 signature over the UTF-8 string
``sha256_hex(raw_body)|nonce|timestamp``; an empty body is signed as ``{}``.
The WebSocket ``auth`` frame signs ``{}`` the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

EMPTY_BODY = b"{}"


def signing_payload(body: bytes, nonce: str, timestamp: str) -> bytes:
    """Return the exact bytes an agent signs for a request with this body."""
    digest = hashlib.sha256(body or EMPTY_BODY).hexdigest()
    return f"{digest}|{nonce}|{timestamp}".encode()


def sign(private_key: Ed25519PrivateKey, body: bytes, nonce: str, timestamp: str) -> str:
    """Sign a request; returns the standard-base64 signature header value."""
    return base64.b64encode(private_key.sign(signing_payload(body, nonce, timestamp))).decode()


def verify(public_key: bytes, body: bytes, nonce: str, timestamp: str, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of this request by ``public_key``."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, signing_payload(body, nonce, timestamp)
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True
