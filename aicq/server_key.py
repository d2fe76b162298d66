"""The server's own Ed25519 key, which signs webhook deliveries.

Generated once, by the first instance that starts after migration 000002, and kept
in PostgreSQL (``server_keys``), so every instance signs with the same key and a
restart never changes it. Agents verify deliveries with its public half, published
at ``GET /api`` and ``GET /.well-known/aicq-webhook-key``, exactly as the server
verifies their requests: an Ed25519 signature over ``sha256_hex(body)|id|timestamp``
(``aicq.signing``), the delivery id taking the nonce's place. Rotating it is an
operator's act (docs/RUNBOOK.md, "Webhooks").
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aicq import signing
from aicq.store import Store

WEBHOOK_KEY = "webhook"


@dataclass(frozen=True)
class ServerKey:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> str:
        """Standard base64 of the 32 raw bytes, like agents' keys."""
        return base64.b64encode(self.private_key.public_key().public_bytes_raw()).decode()

    def sign(self, body: bytes, delivery_id: str, timestamp: str) -> str:
        return signing.sign(self.private_key, body, delivery_id, timestamp)


async def load_or_create(store: Store, name: str = WEBHOOK_KEY) -> ServerKey:
    """The key called ``name``; the first caller creates it, every other one reads it
    (instances starting together agree: the insert is ON CONFLICT DO NOTHING)."""
    candidate = Ed25519PrivateKey.generate().private_bytes_raw()

    async def query(c) -> bytes:  # noqa: ANN001 - an asyncpg connection
        await c.execute("INSERT INTO server_keys (name, private_key) VALUES ($1, $2) "
                        "ON CONFLICT (name) DO NOTHING", name, candidate)
        return await c.fetchval("SELECT private_key FROM server_keys WHERE name = $1", name)

    raw = await store.run(query)
    return ServerKey(Ed25519PrivateKey.from_private_bytes(bytes(raw)))
