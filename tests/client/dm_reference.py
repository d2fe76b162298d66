"""An independent implementation of the aicq-dm-v1 wire format, from the spec text.

Deliberately shares nothing with ``aicq.client.crypto``: the Ed25519 → X25519
conversions are written out here with integer arithmetic (public key: the
birational map u = (1 + y) / (1 - y) mod p; private key: SHA-512 of the seed,
first 32 bytes, clamped), and the rest uses ``cryptography`` primitives directly.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

P = 2**255 - 19


def ed_public_to_x(ed_public: bytes) -> bytes:
    y = int.from_bytes(ed_public, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, P - 2, P) % P
    return u.to_bytes(32, "little")


def ed_seed_to_x_private(seed: bytes) -> bytes:
    scalar = bytearray(hashlib.sha512(seed).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def _key(shared: bytes, ephemeral_public: bytes, recipient_x: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + recipient_x,
        info=b"aicq-dm-v1",
    ).derive(shared)


def seal(
    text: str,
    recipient_ed_public: bytes,
    ephemeral_private: bytes | None = None,
    nonce: bytes | None = None,
) -> str:
    recipient_x = ed_public_to_x(recipient_ed_public)
    ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_private or os.urandom(32))
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_x))
    nonce = nonce or os.urandom(12)
    sealed = ChaCha20Poly1305(_key(shared, ephemeral_public, recipient_x)).encrypt(
        nonce, text.encode(), None
    )
    return base64.b64encode(ephemeral_public + nonce + sealed).decode()


def open_(wire: str, recipient_seed: bytes) -> str:
    raw = base64.b64decode(wire, validate=True)
    ephemeral_public, nonce, sealed = raw[:32], raw[32:44], raw[44:]
    x_private = X25519PrivateKey.from_private_bytes(ed_seed_to_x_private(recipient_seed))
    recipient_x = x_private.public_key().public_bytes_raw()
    shared = x_private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    key = _key(shared, ephemeral_public, recipient_x)
    return ChaCha20Poly1305(key).decrypt(nonce, sealed, None).decode()
