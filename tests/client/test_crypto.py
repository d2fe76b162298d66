"""The DM wire format: fixed vectors, and agreement with an independent implementation."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq.client.crypto import (
    decrypt_dm,
    encrypt_dm,
    x25519_private_from_ed25519,
    x25519_public_from_ed25519,
)
from aicq.client.errors import DMCryptoError

from . import dm_reference

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "dm_v1.json").read_text())


def _seed(vector: dict[str, Any]) -> bytes:
    return base64.b64decode(vector["recipient_ed25519_seed"])


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: repr(v["plaintext"][:12]))
def test_encrypt_matches_vector(vector: dict[str, Any]) -> None:
    wire = encrypt_dm(
        vector["plaintext"],
        vector["recipient_ed25519_public"],
        ephemeral_private_key=bytes.fromhex(vector["ephemeral_x25519_private_hex"]),
        nonce=bytes.fromhex(vector["nonce_hex"]),
    )
    assert wire == vector["wire"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: repr(v["plaintext"][:12]))
def test_decrypt_matches_vector(vector: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(_seed(vector))
    assert decrypt_dm(vector["wire"], key) == vector["plaintext"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: repr(v["plaintext"][:12]))
def test_vector_is_consistent_with_the_spec_text(vector: dict[str, Any]) -> None:
    seed = _seed(vector)
    public = base64.b64decode(vector["recipient_ed25519_public"])
    assert Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() == public
    assert dm_reference.ed_public_to_x(public).hex() == vector["recipient_x25519_public_hex"]
    assert dm_reference.ed_seed_to_x_private(seed).hex() == vector["recipient_x25519_private_hex"]
    wire = dm_reference.seal(
        vector["plaintext"],
        public,
        bytes.fromhex(vector["ephemeral_x25519_private_hex"]),
        bytes.fromhex(vector["nonce_hex"]),
    )
    assert wire == vector["wire"]
    assert dm_reference.open_(vector["wire"], seed) == vector["plaintext"]
    raw = base64.b64decode(vector["wire"])
    assert raw[:32].hex() == vector["ephemeral_x25519_public_hex"]
    assert raw[32:44].hex() == vector["nonce_hex"]
    assert len(raw) == 32 + 12 + len(vector["plaintext"].encode()) + 16


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["reason"])
def test_invalid_wire_is_refused(case: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(case["recipient_ed25519_seed"]))
    with pytest.raises(DMCryptoError):
        decrypt_dm(case["wire"], key)


def test_conversions_match_the_reference_for_random_keys() -> None:
    for _ in range(20):
        seed = os.urandom(32)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        assert x25519_private_from_ed25519(seed) == dm_reference.ed_seed_to_x_private(seed)
        assert x25519_public_from_ed25519(public) == dm_reference.ed_public_to_x(public)


def test_round_trips_both_ways_with_the_reference() -> None:
    key = Ed25519PrivateKey.generate()
    seed, public = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    ours = encrypt_dm("from the library ✓", base64.b64encode(public).decode())
    assert dm_reference.open_(ours, seed) == "from the library ✓"
    theirs = dm_reference.seal("from the reference ✓", public)
    assert decrypt_dm(theirs, key) == "from the reference ✓"


def test_each_message_gets_a_fresh_ephemeral_key_and_nonce() -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    first = base64.b64decode(encrypt_dm("same", public))
    second = base64.b64decode(encrypt_dm("same", public))
    assert first[:32] != second[:32]
    assert first[32:44] != second[32:44]


def test_bad_recipient_key_is_a_crypto_error() -> None:
    with pytest.raises(DMCryptoError):
        encrypt_dm("x", "not base64!")
    with pytest.raises(DMCryptoError):
        encrypt_dm("x", base64.b64encode(b"short").decode())
