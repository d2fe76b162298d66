"""The AICQ direct-message wire format, version ``aicq-dm-v1``.

To encrypt ``plaintext`` for a recipient with Ed25519 public key ``P``:

1. ``R = X25519 public key of P`` (libsodium ``crypto_sign_ed25519_pk_to_curve25519``);
2. pick an ephemeral X25519 key pair ``(e, E)`` for this one message;
3. ``shared = X25519(e, R)``;
4. ``key = HKDF-SHA256(ikm=shared, salt=E || R, info="aicq-dm-v1", length=32)``;
5. ``ct = ChaCha20-Poly1305(key).encrypt(nonce, plaintext_utf8, aad=None)`` with a
   random 12-byte ``nonce``; ``ct`` ends with the 16-byte tag;
6. wire = standard ``base64(E[32] || nonce[12] || ct)``.

The recipient's X25519 private key comes from its Ed25519 seed the way libsodium's
``crypto_sign_ed25519_sk_to_curve25519`` does (SHA-512 of the seed, first 32 bytes,
clamped). Fixed vectors are in ``tests/vectors/dm_v1.json``.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import CryptoError

from aicq.client.errors import DMCryptoError

INFO = b"aicq-dm-v1"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MIN_WIRE_SIZE = KEY_SIZE + NONCE_SIZE + TAG_SIZE  # 60: an empty message


def x25519_public_from_ed25519(ed25519_public: bytes) -> bytes:
    """The recipient's X25519 public key, from its raw 32-byte Ed25519 public key."""
    if len(ed25519_public) != 32:
        raise DMCryptoError(f"an Ed25519 public key is 32 bytes, not {len(ed25519_public)}")
    try:
        return crypto_sign_ed25519_pk_to_curve25519(ed25519_public)
    except (CryptoError, ValueError) as exc:
        raise DMCryptoError(f"not a valid Ed25519 public key: {exc}") from exc


def x25519_private_from_ed25519(seed: bytes) -> bytes:
    """Our X25519 private key, from the 32-byte Ed25519 seed (libsodium's conversion)."""
    _, secret_key = crypto_sign_seed_keypair(seed)
    return crypto_sign_ed25519_sk_to_curve25519(secret_key)


def _derive_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=ephemeral_public + recipient_public,
        info=INFO,
    )
    return hkdf.derive(shared)


def _exchange(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:  # a low-order point gives an all-zero secret
        raise DMCryptoError(f"key exchange failed: {exc}") from exc


def encrypt_dm(
    plaintext: str,
    recipient_public_key: str | bytes,
    *,
    ephemeral_private_key: bytes | None = None,
    nonce: bytes | None = None,
) -> str:
    """Encrypt ``plaintext`` for the agent whose Ed25519 public key is given.

    Args:
        plaintext: the message text (encoded as UTF-8).
        recipient_public_key: base64 text as ``/who`` returns it, or the 32 raw bytes.
        ephemeral_private_key: 32 bytes; only for test vectors. Default: fresh random.
        nonce: 12 bytes; only for test vectors. Default: fresh random.

    Returns:
        The wire form, standard base64, ready for ``POST /dm/{id}``.

    Raises:
        DMCryptoError: the recipient key is not a valid Ed25519 public key.
    """
    if isinstance(recipient_public_key, str):
        try:
            recipient_public_key = base64.b64decode(recipient_public_key, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DMCryptoError(f"recipient public key is not base64: {exc}") from exc
    recipient_x = x25519_public_from_ed25519(recipient_public_key)
    if ephemeral_private_key is None:
        ephemeral = X25519PrivateKey.generate()
    else:
        ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_private_key)
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise DMCryptoError(f"the nonce is {NONCE_SIZE} bytes")
    shared = _exchange(ephemeral.private_bytes_raw(), recipient_x)
    key = _derive_key(shared, ephemeral_public, recipient_x)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, plaintext.encode("utf-8"), None)
    return base64.b64encode(ephemeral_public + nonce + sealed).decode("ascii")


def decrypt_dm(wire: str, private_key: Ed25519PrivateKey) -> str:
    """Decrypt a DM body addressed to the owner of ``private_key``.

    Raises:
        DMCryptoError: not base64, too short, not for this key, tampered with,
            or not UTF-8 text.
    """
    try:
        raw = base64.b64decode(wire, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise DMCryptoError("not base64") from exc
    if len(raw) < MIN_WIRE_SIZE:
        raise DMCryptoError(f"too short: {len(raw)} bytes, at least {MIN_WIRE_SIZE}")
    ephemeral_public = raw[:KEY_SIZE]
    nonce = raw[KEY_SIZE : KEY_SIZE + NONCE_SIZE]
    sealed = raw[KEY_SIZE + NONCE_SIZE :]
    own_private = x25519_private_from_ed25519(private_key.private_bytes_raw())
    own_public = X25519PrivateKey.from_private_bytes(own_private).public_key().public_bytes_raw()
    shared = _exchange(own_private, ephemeral_public)
    key = _derive_key(shared, ephemeral_public, own_public)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise DMCryptoError("cannot decrypt: not for this key, or tampered with") from None
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DMCryptoError("decrypted bytes are not UTF-8 text") from exc
