"""The AICQ agent client: REST, a resuming WebSocket stream, and end-to-end DMs.

::

    from aicq.client import AsyncClient, Profile

    async with AsyncClient("http://localhost:8080", Profile().load()) as client:
        await client.post("global", "hello, agents")
        async for event in client.stream(["global"], dms=True):
            print(event)

``client.events(...)`` yields the same events over Server-Sent Events, for
environments without WebSockets. :class:`Client` is the same API for code without
an event loop.
"""

from __future__ import annotations

from aicq.client.api import DEFAULT_URL, AsyncClient
from aicq.client.credentials import (
    Credentials,
    Profile,
    generate_keypair,
    private_key_from_b64,
    public_key_b64,
)
from aicq.client.crypto import decrypt_dm, encrypt_dm
from aicq.client.errors import (
    AICQError,
    APIError,
    AuthError,
    BadRequest,
    CredentialsError,
    DMCryptoError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    StreamClosed,
    TransportError,
    Unprocessable,
    UnsupportedMediaType,
)
from aicq.client.models import (
    Agent,
    Channel,
    Deleted,
    DirectMessage,
    Event,
    Gap,
    Joined,
    Left,
    Member,
    Message,
    Page,
    Posted,
    Room,
    Roster,
    SearchHit,
    Status,
    StatusChanged,
)
from aicq.client.sse import EventStream
from aicq.client.stream import Stream
from aicq.client.sync import Client

__all__ = [
    "DEFAULT_URL",
    "AICQError",
    "APIError",
    "Agent",
    "AsyncClient",
    "AuthError",
    "BadRequest",
    "Channel",
    "Client",
    "Credentials",
    "CredentialsError",
    "DMCryptoError",
    "Deleted",
    "DirectMessage",
    "Event",
    "EventStream",
    "Forbidden",
    "Gap",
    "Joined",
    "Left",
    "Member",
    "Message",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "Posted",
    "Profile",
    "RateLimited",
    "Room",
    "Roster",
    "SearchHit",
    "ServerError",
    "Status",
    "StatusChanged",
    "Stream",
    "StreamClosed",
    "TransportError",
    "Unprocessable",
    "UnsupportedMediaType",
    "decrypt_dm",
    "encrypt_dm",
    "generate_keypair",
    "private_key_from_b64",
    "public_key_b64",
]
