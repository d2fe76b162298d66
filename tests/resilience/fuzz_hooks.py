"""Schemathesis hooks for the schema fuzz run (loaded through SCHEMATHESIS_HOOKS=fuzz_hooks).

Signing: the signature must cover the exact body bytes on the wire, which exist
only once `requests` has prepared the request. So the auth provider marks a case
"to be signed" (the agent id and a placeholder signature) and a `requests` auth
callable, run on the prepared request, fills in a fresh nonce, the current
timestamp and the signature of ``prepared.body``. Probes that strip or replace
the AICQ headers (the `ignored_auth` check) lose the placeholder and go out as
they were built, so they really test that the server refuses them.

One known false positive of the fuzzer (named ``fuzzer:...``) is filtered out of
the run, narrowly, and tallied into AICQ_FUZZ_TALLY so the test can print how
often it was hit. (Server bugs it once found are fixed and pinned by the tests at
the bottom of test_fuzz_schema.py.)

Environment (set by test_fuzz_schema.py):
    AICQ_FUZZ_AGENT        the agent's UUID
    AICQ_FUZZ_AGENT_KEY    base64 of its 32 raw Ed25519 private-key bytes
    AICQ_FUZZ_ROOM         a public room that agent created
    AICQ_FUZZ_TALLY        a file: one line per filtered failure
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from typing import Any

import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PLACEHOLDER = "to-be-signed-on-the-wire"
# addWebhook stays unsigned: signed, it would register webhooks to whatever hosts the
# fuzzer makes up (and resolve their names), then POST events to them.
SIGNED_OPERATIONS = ["createRoom", "getRoom", "postMessage", "deleteMessage",
                     "sendDirectMessage", "getInbox", "openWebSocket", "getRoomPresence", "setStatus",
                     "streamEvents", "getMentions", "listWebhooks", "deleteWebhook"]

AGENT_ID = os.environ.get("AICQ_FUZZ_AGENT", "")
ROOM = os.environ.get("AICQ_FUZZ_ROOM", "")
TALLY = os.environ.get("AICQ_FUZZ_TALLY", "")
_raw_key = os.environ.get("AICQ_FUZZ_AGENT_KEY")
_KEY = Ed25519PrivateKey.from_private_bytes(base64.b64decode(_raw_key)) if _raw_key else None
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def sign(body: bytes, nonce: str, timestamp: str) -> str:
    """SPEC §3, written out here rather than imported: the fuzzer is an outside client."""
    assert _KEY is not None, "AICQ_FUZZ_AGENT_KEY is not set"
    digest = hashlib.sha256(body or b"{}").hexdigest()
    return base64.b64encode(_KEY.sign(f"{digest}|{nonce}|{timestamp}".encode())).decode()


class SignOnTheWire(requests.auth.AuthBase):
    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        headers = prepared.headers
        if headers.get("X-AICQ-Signature") != PLACEHOLDER or headers.get("X-AICQ-Agent") != AGENT_ID:
            return prepared  # a probe changed the credentials: send exactly what it built
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode()
        nonce = secrets.token_hex(16)
        timestamp = str(int(time.time() * 1000))
        headers["X-AICQ-Nonce"] = nonce
        headers["X-AICQ-Timestamp"] = timestamp
        headers["X-AICQ-Signature"] = sign(body, nonce, timestamp)
        return prepared


_SIGNER = SignOnTheWire()


@schemathesis.auth(refresh_interval=None, retry_on=[]).apply_to(operation_id=SIGNED_OPERATIONS)
class AgentSignature:
    def get(self, case: Any, ctx: Any) -> str:
        return AGENT_ID

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = case.headers or {}
        case.headers["X-AICQ-Agent"] = data
        case.headers["X-AICQ-Nonce"] = PLACEHOLDER
        case.headers["X-AICQ-Timestamp"] = "0"
        case.headers["X-AICQ-Signature"] = PLACEHOLDER
        case._auth = _SIGNER


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Aim part of the well-formed ids at things that exist, so the core paths run too.

    Random UUIDs name no agent, and random room names no room: without this, every
    DM is a 404. Only values that already have the right shape are swapped (the
    choice is a hash of the case, so reruns of one case agree); schemathesis
    revalidates the case after this hook, so negative cases stay negative.
    """
    path = case.path_parameters
    if not path or "id" not in path or not isinstance(path["id"], str):
        return
    flip = hashlib.sha256(repr(sorted(path.items())).encode()).digest()[0] % 2 == 0
    if not flip:
        return
    label = case.operation.label
    if label == "POST /dm/{id}" and _UUID.match(path["id"]) and AGENT_ID:
        path["id"] = AGENT_ID
    elif label in ("POST /room/{id}", "GET /room/{id}", "GET /room/{id}/presence") and ROOM \
            and re.match(r"^[A-Za-z0-9_-]{1,50}$", path["id"]):
        path["id"] = ROOM


def _error(response: Any) -> str:
    try:
        return str(response.json().get("error", ""))
    except Exception:
        return ""


def known_bug(failure: Any, case: Any, response: Any) -> str | None:
    """The name of the known server bug this failure is, or None for anything new."""
    kind = type(failure).__name__
    if kind == "RejectedPositiveData" and response.status_code == 400 and "must be a UUID" in _error(response) \
            and not _UUID.match(str((case.path_parameters or {}).get("id", ""))):
        # Not a server bug: the stateful phase fills an agent id from a DM's ULID and, as
        # OpenAPI 3.1 treats `format: uuid` as an annotation, calls the result schema-valid.
        return "fuzzer:format-uuid-not-asserted"
    key = (case.body or {}).get("key") if isinstance(case.body, dict) else None
    if kind == "RejectedPositiveData" and response.status_code == 400 \
            and _error(response) == "room key must be at most 72 bytes" \
            and isinstance(key, str) and len(key.encode("utf-8", "surrogatepass")) > 72:
        # Not a server bug: bcrypt takes 72 bytes, JSON Schema can only count characters
        # (maxLength 72), so a 72-character key of multi-byte characters looks valid.
        return "fuzzer:utf8-bytes-not-expressible"
    return None


def _base64_bytes(value: Any) -> int | None:
    try:
        return len(base64.b64decode(value, validate=True))
    except Exception:
        return None


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    bug = known_bug(failure, case, response)
    if bug is None:
        return True
    if TALLY:
        with open(TALLY, "a") as tally:
            tally.write(bug + "\n")
    return False
