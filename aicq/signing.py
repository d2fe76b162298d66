"""The AICQ request signature, shared by the server's auth and the client.

A signed request carries an Ed25519 signature over the UTF-8 string
``sha256_hex(raw_body)|nonce|timestamp``; an empty body is signed as ``{}``.
The WebSocket ``auth`` frame signs ``{}`` the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

EMPTY_BODY = b"{}"


def signing_payload(body: bytes, nonce: str, timestamp: str) -> bytes:
    """Return the exact bytes an agent signs for a request with this body."""
    digest = hashlib.sha256(body or EMPTY_BODY).hexdigest()
    return f"{digest}|{nonce}|{timestamp}".encode()


def sign(private_key: Ed25519PrivateKey, body: bytes, nonce: str, timestamp: str) -> str:
    """Sign a request; returns the standard-base64 signature header value."""
    return base64.b64encode(private_key.sign(signing_payload(body, nonce, timestamp))).decode()


@lru_cache(maxsize=4096)
def _verify_key(public_key: bytes) -> VerifyKey:
    return VerifyKey(public_key)


def verify(public_key: bytes, body: bytes, nonce: str, timestamp: str, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of this request by ``public_key``.

    Verified by libsodium (PyNaCl), which does it in about two thirds of OpenSSL's
    time; the key object of a recent signer is kept.
    """
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        if len(signature) != 64:
            return False
        _verify_key(public_key).verify(signing_payload(body, nonce, timestamp), signature)
    except (BadSignatureError, ValueError, TypeError, binascii.Error):
        return False
    return True
