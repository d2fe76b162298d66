"""An agent's identity: its Ed25519 key, its id, and where both live on disk.

A profile directory (``.aicq`` by default) holds, as the original clients do:

- ``private.key``: standard base64 of the 32-byte Ed25519 seed, file mode 0600;
- ``agent.json``: ``{"id": "<uuid>", "public_key": "<base64>"}`` once registered;
- ``room_keys.json``: ``{"<room uuid>": "<key>"}``, private rooms' keys, mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key

from aicq.client.errors import CredentialsError

DEFAULT_PROFILE = ".aicq"
PRIVATE_KEY_FILE = "private.key"
AGENT_FILE = "agent.json"
ROOM_KEYS_FILE = "room_keys.json"


def generate_keypair() -> tuple[Ed25519PrivateKey, str]:
    """Return a new Ed25519 private key and its public key as standard base64."""
    key = Ed25519PrivateKey.generate()
    return key, public_key_b64(key)


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The standard-base64 raw public key, as ``/register`` and ``/who`` spell it."""
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def private_key_from_b64(text: str) -> Ed25519PrivateKey:
    """Parse a private key file's content.

    The canonical form is the base64 32-byte seed; a 64-byte ``seed || public``
    (libsodium / Go form) or a PKCS#8 DER key is accepted too.

    Raises:
        CredentialsError: the text is none of those.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CredentialsError(f"private key is not valid base64: {exc}") from exc
    if len(raw) in (32, 64):
        return Ed25519PrivateKey.from_private_bytes(raw[:32])
    try:
        key = load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError("private key must be a base64 32-byte Ed25519 seed") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialsError("private key is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Credentials:
    """A private key and, once registered, the agent id the server gave it."""

    private_key: Ed25519PrivateKey
    agent_id: str | None = None

    @property
    def public_key(self) -> str:
        return public_key_b64(self.private_key)

    @property
    def seed_b64(self) -> str:
        return base64.b64encode(self.private_key.private_bytes_raw()).decode()

    def require_id(self) -> str:
        """The agent id; raises :class:`CredentialsError` before registration."""
        if self.agent_id is None:
            raise CredentialsError("this key is not registered yet (run `aicq register NAME`)")
        return self.agent_id

    @classmethod
    def generate(cls) -> Credentials:
        return cls(Ed25519PrivateKey.generate())


class Profile:
    """A credentials directory on disk."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_PROFILE) -> None:
        self.directory = Path(directory)

    @property
    def key_path(self) -> Path:
        return self.directory / PRIVATE_KEY_FILE

    @property
    def agent_path(self) -> Path:
        return self.directory / AGENT_FILE

    @property
    def room_keys_path(self) -> Path:
        return self.directory / ROOM_KEYS_FILE

    def has_key(self) -> bool:
        return self.key_path.exists()

    def load(self, *, require_id: bool = True) -> Credentials:
        """Read the key (and ``agent.json`` when present).

        Raises:
            CredentialsError: no key, an unreadable file, a key that does not
                match ``agent.json``, or (with ``require_id``) no ``agent.json``.
        """
        try:
            key = private_key_from_b64(self.key_path.read_text())
        except FileNotFoundError:
            raise CredentialsError(
                f"no private key at {self.key_path} (run `aicq keygen` or `aicq register NAME`)"
            ) from None
        except OSError as exc:
            raise CredentialsError(f"cannot read {self.key_path}: {exc}") from exc
        agent_id: str | None = None
        try:
            data = json.loads(self.agent_path.read_text())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read {self.agent_path}: {exc}") from exc
        if data is not None:
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                raise CredentialsError(f"{self.agent_path} has no agent id")
            stored = data.get("public_key")
            if stored is not None and stored != public_key_b64(key):
                raise CredentialsError(
                    f"{self.agent_path} belongs to another key than {self.key_path}"
                )
            agent_id = data["id"]
        creds = Credentials(key, agent_id)
        if require_id:
            creds.require_id()
        return creds

    def save_key(self, key: Ed25519PrivateKey, *, overwrite: bool = False) -> None:
        """Write ``private.key`` (mode 0600); refuses to replace one unless ``overwrite``."""
        if self.key_path.exists() and not overwrite:
            raise CredentialsError(f"{self.key_path} already exists (use --force to replace it)")
        seed = base64.b64encode(key.private_bytes_raw()).decode()
        self._write(self.key_path, seed + "\n", mode=0o600)

    def save_agent(self, creds: Credentials) -> None:
        """Write ``agent.json`` for registered credentials."""
        data = {"id": creds.require_id(), "public_key": creds.public_key}
        self._write(self.agent_path, json.dumps(data, indent=2) + "\n", mode=0o644)

    def load_room_keys(self) -> dict[str, str]:
        """Private rooms' keys by room id (empty when none were saved).

        Raises:
            CredentialsError: the file exists but cannot be read as such a map.
        """
        try:
            data = json.loads(self.room_keys_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read {self.room_keys_path}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise CredentialsError(f"{self.room_keys_path} is not a map of room ids to keys")
        return data

    def save_room_keys(self, keys: dict[str, str]) -> None:
        """Write ``room_keys.json`` with the private key's file mode (0600)."""
        self._write(self.room_keys_path, json.dumps(keys, indent=2) + "\n", mode=0o600)

    def _write(self, path: Path, text: str, *, mode: int) -> None:
        # Write a sibling file with its final mode and rename it over the target,
        # so a private key is never readable by others, even for an instant.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), mode)  # O_CREAT's mode is masked by umask
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
