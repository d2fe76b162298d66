"""Start and stop what webhooks need on one instance: the server's key, the registry,
the delivery worker and the periodic re-listing."""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from aicq import server_key
from aicq.server_key import ServerKey
from aicq.service import ChatService
from aicq.settings import Settings
from aicq.shutdown import cancel_and_wait
from aicq.store import Store
from aicq.webhooks.registry import Registry
from aicq.webhooks.sender import Sender
from aicq.webhooks.store import WebhookStore
from aicq.webhooks.worker import STOP_GRACE_S, DeliveryWorker

log = logging.getLogger("aicq.webhooks")

WORKER_CONNECTIONS = 32


class Webhooks:
    def __init__(self, key: ServerKey, registry: Registry, worker: DeliveryWorker, sender: Sender,
                 worker_redis: aioredis.Redis):
        self.key = key
        self.registry = registry
        self.worker = worker
        self._sender = sender
        self._worker_redis = worker_redis
        self._sync: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, store: Store, redis: aioredis.Redis, chat: ChatService) -> Webhooks:
        assert settings.redis_url
        key = await server_key.load_or_create(store)
        webhooks = WebhookStore(store)
        registry = Registry(settings, webhooks, redis, chat, key)
        listed = await registry.sync()
        worker_redis = worker_client(settings.redis_url)
        sender = Sender(key, allow_private=settings.webhook_allow_private, production=settings.production)
        worker = DeliveryWorker(settings, worker_redis, webhooks, sender)
        await worker.start()
        self = cls(key, registry, worker, sender, worker_redis)
        self._sync = asyncio.create_task(registry.sync_forever(), name="aicq-webhooks-sync")
        if settings.webhook_allow_private:
            log.warning("WEBHOOK_ALLOW_PRIVATE is on: webhooks may call private and loopback addresses")
        log.info("webhooks ready: %d endpoints listed, signing key %s", listed, key.public_key)
        return self

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop the re-listing and the worker (attempts in flight get ``grace`` seconds)."""
        await cancel_and_wait(self._sync)
        await self.worker.stop(grace)
        await self._sender.aclose()
        await self._worker_redis.aclose()


def worker_client(url: str) -> aioredis.Redis:
    """The worker's own Redis client, off the request path's pool. Hundreds of its
    deliveries may touch Redis at once: they wait for one of its connections rather
    than fail (a blocking pool), and its blocking stream reads wait there too."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=WORKER_CONNECTIONS, timeout=10, socket_timeout=5, socket_connect_timeout=1,
        health_check_interval=15)
    return aioredis.Redis(connection_pool=pool)
