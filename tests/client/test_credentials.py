"""The profile directory: same files, same formats as the original clients."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from aicq.client.credentials import Credentials, Profile, generate_keypair, private_key_from_b64
from aicq.client.errors import CredentialsError


def test_saved_key_is_the_base64_seed_with_mode_0600(tmp_path: Path) -> None:
    profile = Profile(tmp_path / ".aicq")
    key, public = generate_keypair()
    profile.save_key(key)
    assert stat.S_IMODE(profile.key_path.stat().st_mode) == 0o600
    raw = base64.b64decode(profile.key_path.read_text().strip(), validate=True)
    assert raw == key.private_bytes_raw()
    loaded = profile.load(require_id=False)
    assert loaded.public_key == public
    assert loaded.agent_id is None


def test_agent_json_holds_id_and_public_key(tmp_path: Path) -> None:
    profile = Profile(tmp_path)
    creds = Credentials(Credentials.generate().private_key, "0f0e0d0c-0b0a-4908-8706-050403020100")
    profile.save_key(creds.private_key)
    profile.save_agent(creds)
    assert json.loads(profile.agent_path.read_text()) == {
        "id": creds.agent_id,
        "public_key": creds.public_key,
    }
    loaded = profile.load()
    assert (loaded.agent_id, loaded.public_key) == (creds.agent_id, creds.public_key)


def test_missing_files_are_credentials_errors(tmp_path: Path) -> None:
    profile = Profile(tmp_path / "nowhere")
    with pytest.raises(CredentialsError, match="no private key"):
        profile.load()
    profile.save_key(Credentials.generate().private_key)
    with pytest.raises(CredentialsError, match="not registered"):
        profile.load()


def test_existing_key_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    profile = Profile(tmp_path)
    first = Credentials.generate().private_key
    profile.save_key(first)
    with pytest.raises(CredentialsError, match="already exists"):
        profile.save_key(Credentials.generate().private_key)
    profile.save_key(Credentials.generate().private_key, overwrite=True)
    assert (
        profile.load(require_id=False).private_key.private_bytes_raw() != first.private_bytes_raw()
    )


def test_agent_json_for_another_key_is_refused(tmp_path: Path) -> None:
    profile = Profile(tmp_path)
    profile.save_key(Credentials.generate().private_key)
    other = Credentials(Credentials.generate().private_key, "0f0e0d0c-0b0a-4908-8706-050403020100")
    profile.save_agent(other)
    with pytest.raises(CredentialsError, match="another key"):
        profile.load()


def test_other_private_key_encodings_are_accepted() -> None:
    key, _ = generate_keypair()
    seed = key.private_bytes_raw()
    public = key.public_key().public_bytes_raw()
    pkcs8 = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    for raw in (seed, seed + public, pkcs8):
        loaded = private_key_from_b64(base64.b64encode(raw).decode() + "\n")
        assert loaded.private_bytes_raw() == seed
    with pytest.raises(CredentialsError):
        private_key_from_b64("not base64!")
    with pytest.raises(CredentialsError):
        private_key_from_b64(base64.b64encode(b"too short").decode())
