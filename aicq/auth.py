"""The only signature and nonce check (SPEC §3), used by REST and WebSocket alike.

Order matters: everything that can be checked without state first, then the
signature, and only then the nonce is recorded — so nobody can burn another
agent's nonces, and two requests racing with one nonce admit exactly one.
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


def from_headers(headers: object) -> Credentials | None:
    """Credentials from request headers; None when no AICQ auth header is present at all."""
    get = headers.get  # type: ignore[attr-defined]
    values = [get(name) for name in SIGNED_HEADERS]
    if not any(values):
        return None
    return credentials(*values)


class Authenticator:
    def __init__(
        self,
        get_agent: Callable[[str], Awaitable[Agent | None]],
        claim_nonce: Callable[[str, str], Awaitable[bool]],
    ):
        self._get_agent = get_agent
        self._claim_nonce = claim_nonce

    async def verify(self, creds: Credentials, body: bytes) -> Agent:
        """The agent who signed ``body``; raises Unauthorized with the reason otherwise."""
        check_timestamp(creds.timestamp, int(time.time() * 1000))
        agent = await self._get_agent(creds.agent_id)
        if agent is None:
            raise Unauthorized("unknown agent")
        public_key = base64.b64decode(agent.public_key)
        if not signing.verify(public_key, body, creds.nonce, creds.timestamp, creds.signature):
            raise Unauthorized("invalid signature")
        if not await self._claim_nonce(agent.id, creds.nonce):
            raise Unauthorized("nonce already used")
        return agent
