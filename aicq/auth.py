"""The only signature and nonce check (SPEC §3), used by REST and WebSocket alike.

Order matters: everything that can be checked without state first, then the
signature, and only then the nonce is recorded (by the request's admission,
aicq/limits.py) — so nobody can burn another agent's nonces, and two requests
racing with one nonce admit exactly one.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aicq import signing
from aicq.errors import Unauthorized
from aicq.models import Agent
from aicq.validation import is_uuid

NONCE_TTL_S = 180  # longer than a timestamp is accepted (MAX_AGE_MS + MAX_FUTURE_MS)
NONCE_USED = "nonce already used"
MAX_AGE_MS = 30_000
MAX_FUTURE_MS = 5_000
NONCE_MIN, NONCE_MAX = 24, 128

HEADER_AGENT = "x-aicq-agent"
HEADER_NONCE = "x-aicq-nonce"
HEADER_TIMESTAMP = "x-aicq-timestamp"
HEADER_SIGNATURE = "x-aicq-signature"
SIGNED_HEADERS = (HEADER_AGENT, HEADER_NONCE, HEADER_TIMESTAMP, HEADER_SIGNATURE)


@dataclass(frozen=True)
class Credentials:
    agent_id: str
    nonce: str
    timestamp: str
    signature: str


def credentials(agent: object, nonce: object, timestamp: object, signature: object) -> Credentials:
    """Check the shape of the four values (pure); raise Unauthorized with the reason."""
    if not all(isinstance(v, str) and v for v in (agent, nonce, timestamp, signature)):
        raise Unauthorized("missing authentication headers")
    assert isinstance(agent, str) and isinstance(nonce, str)
    assert isinstance(timestamp, str) and isinstance(signature, str)
    if not is_uuid(agent):
        raise Unauthorized("invalid agent id")
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise Unauthorized(f"nonce must be {NONCE_MIN}-{NONCE_MAX} characters")
    return Credentials(str(uuid.UUID(agent)), nonce, timestamp, signature)


def check_timestamp(timestamp: str, now_ms: int) -> None:
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 16:
        raise Unauthorized("invalid timestamp: must be unix milliseconds")
    age = now_ms - int(timestamp)
    if age > MAX_AGE_MS:
        raise Unauthorized("timestamp expired: older than 30 seconds")
    if age < -MAX_FUTURE_MS:
        raise Unauthorized("timestamp is in the future")


def nonce_key(agent_id: str, nonce: str) -> str:
    return f"nonce:{agent_id}:{nonce}"


def from_headers(headers: object) -> Credentials | None:
    """Credentials from request headers; None when no AICQ auth header is present at all."""
    get = headers.get  # type: ignore[attr-defined]
    values = [get(name) for name in SIGNED_HEADERS]
    if not any(values):
        return None
    return credentials(*values)


class Authenticator:
    def __init__(self, get_agent: Callable[[str], Awaitable[Agent | None]]):
        self._get_agent = get_agent

    async def verify(self, creds: Credentials, body: bytes) -> Agent:
        """The agent who signed ``body``; raises Unauthorized with the reason otherwise.

        The nonce is not spent here: the request's admission spends it (aicq/limits.py),
        in the same round trip as the rest of what the request is counted for.
        """
        check_timestamp(creds.timestamp, int(time.time() * 1000))
        agent = await self._get_agent(creds.agent_id)
        if agent is None:
            raise Unauthorized("unknown agent")
        public_key = base64.b64decode(agent.public_key)
        if not signing.verify(public_key, body, creds.nonce, creds.timestamp, creds.signature):
            raise Unauthorized("invalid signature")
        return agent
