"""The delivery worker: every instance runs one, and the consumer group shares the work.

It reads new entries when it has room (``CONCURRENCY`` attempts in flight, at most
``PER_WEBHOOK`` of them to one endpoint, so one slow endpoint cannot take every
slot), and a maintenance tick keeps the rest moving: it refreshes the claim on
entries in flight, takes over entries whose instance died (XAUTOCLAIM after
``WEBHOOK_CLAIM_IDLE_MS``), puts due retries back into the stream and samples the
queue gauges.

A failed attempt is retried after ``WEBHOOK_RETRY_BASE_MS`` × 2^(attempt-1) (at most an
hour, a little jitter), the last one exactly ``WEBHOOK_RETRY_WINDOW_S`` after the event;
if that fails too, the event is dropped and counted. An endpoint is *failing since* the
event of its oldest delivery that failed (no success since); once that is a whole
window ago, it is disabled: the event that proves it is the one dropped, so an
endpoint that is down for good is disabled exactly when its first event is given up.

Delivery never touches the post path: posting only XADDs (inside its own script),
and this worker's awaits are its own. Its only shared resource is the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from aicq import metrics
from aicq.errors import AICQError
from aicq.models import rfc3339
from aicq.rediskit import timed
from aicq.settings import Settings
from aicq.webhooks.model import Webhook
from aicq.webhooks.queue import DeliveryQueue, Entry
from aicq.webhooks.registry import unlist_targets
from aicq.webhooks.sender import Attempt, Sender
from aicq.webhooks.store import WebhookStore

log = logging.getLogger("aicq.webhooks")

CONCURRENCY = 64
PER_WEBHOOK = 4
BLOCK_MS = 1000
MAX_DELAY_MS = 3600 * 1000
DEFER_MS = 1000  # an entry for an endpoint already at PER_WEBHOOK waits this long
GAUGE_EVERY_S = 2.0
PRUNE_EVERY_S = 600.0
STOP_GRACE_S = 5.0


def retry_delay_ms(attempts: int, base_ms: int) -> int:
    """The wait after the ``attempts``-th failure: doubling from ``base_ms``, at most an
    hour, each wait shortened by up to a quarter so retries of one outage spread out."""
    delay = min(base_ms * 2 ** min(attempts - 1, 40), MAX_DELAY_MS)
    return int(delay * random.uniform(0.75, 1.0))


class DeliveryWorker:
    def __init__(self, settings: Settings, redis: aioredis.Redis, webhooks: WebhookStore, sender: Sender):
        self.settings = settings
        self.redis = redis
        self.queue = DeliveryQueue(redis, settings.instance)
        self.webhooks = webhooks
        self.sender = sender
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # entry id -> its attempt
        self._per_webhook: collections.Counter[str] = collections.Counter()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.tick_s = max(0.05, min(self.settings.webhook_claim_idle_ms / 4,
                                    self.settings.webhook_retry_base_ms / 2, 1000) / 1000)

    async def start(self) -> None:
        await self.queue.ensure_group()
        self._tasks = [asyncio.create_task(self._consume(), name="aicq-webhooks-consume"),
                       asyncio.create_task(self._maintain(), name="aicq-webhooks-maintain")]

    async def stop(self) -> None:
        """Stop reading; let attempts in flight finish for a moment. An attempt still
        running after that is abandoned: its entry stays pending and another instance
        takes it over once its claim goes stale."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=STOP_GRACE_S)
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    # Reading

    async def _consume(self) -> None:
        pause = 0.1
        while True:
            try:
                await self._room.wait()
                entries = await self.queue.read(CONCURRENCY - len(self._in_flight), BLOCK_MS)
                self._spawn(entries)
                pause = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the entries wait in the stream
                log.warning("webhook queue unavailable (%s: %s)", type(exc).__name__, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _spawn(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.entry_id in self._in_flight:
                continue  # claimed back while we are still at it
            task = asyncio.create_task(self._deliver(entry))
            self._in_flight[entry.entry_id] = task
            task.add_done_callback(lambda _, entry_id=entry.entry_id: self._done(entry_id))
        if len(self._in_flight) >= CONCURRENCY:
            self._room.clear()

    def _done(self, entry_id: str) -> None:
        self._in_flight.pop(entry_id, None)
        if len(self._in_flight) < CONCURRENCY:
            self._room.set()

    async def _maintain(self) -> None:
        last_gauges = last_prune = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.queue.heartbeat(list(self._in_flight))
                room = CONCURRENCY - len(self._in_flight)
                if room > 0:
                    self._spawn(await self.queue.claim_stale(self.settings.webhook_claim_idle_ms, room))
                await self.queue.move_due()
                now = time.monotonic()
                if now - last_gauges >= GAUGE_EVERY_S:
                    last_gauges = now
                    await self._sample()
                if now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    await self.queue.prune_consumers(idle_ms=int(PRUNE_EVERY_S * 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook maintenance failed (%s: %s)", type(exc).__name__, exc)

    async def _sample(self) -> None:
        depth = await self.queue.depth()
        metrics.WEBHOOK_QUEUE_DEPTH.labels(state="ready").set(depth.ready)
        metrics.WEBHOOK_QUEUE_DEPTH.labels(state="scheduled").set(depth.scheduled)
        age = 0.0 if depth.oldest_ms is None else max(0.0, time.time() - depth.oldest_ms / 1000)
        metrics.WEBHOOK_OLDEST_PENDING.set(age)
        metrics.WEBHOOK_OVERFLOW.set(depth.overflow)

    # Delivering

    async def _deliver(self, entry: Entry) -> None:
        try:
            webhook = await self.webhooks.get(entry.webhook_id, cached=True)
            if webhook is None or webhook.disabled_at is not None:
                await self._discard(entry, webhook)
                return
            if self._per_webhook[webhook.id] >= PER_WEBHOOK:
                await self.queue.reschedule(entry, _now_ms() + DEFER_MS, entry.attempts)
                return
            self._per_webhook[webhook.id] += 1
            try:
                attempt = await self.sender.send(webhook.url, entry, entry.attempts + 1)
            finally:
                self._per_webhook[webhook.id] -= 1
                if not self._per_webhook[webhook.id]:
                    del self._per_webhook[webhook.id]
            metrics.WEBHOOK_ATTEMPT_DURATION.observe(attempt.seconds)
            if entry.attempts:
                metrics.WEBHOOK_RETRIES.inc()
            if attempt.ok:
                await self._delivered(webhook, entry, attempt)
            else:
                await self._failed(webhook, entry, attempt)
        except asyncio.CancelledError:
            raise
        except (AICQError, OSError, aioredis.RedisError) as exc:
            # A store went away mid-way: the entry stays pending, and is taken over
            # (by us or another instance) once its claim goes stale.
            log.warning("webhook delivery interrupted (%s: %s)", type(exc).__name__, exc)
        except Exception:
            log.exception("webhook delivery failed unexpectedly")

    async def _discard(self, entry: Entry, webhook: Webhook | None) -> None:
        if await self.queue.finish(entry):
            metrics.WEBHOOK_DELIVERIES.labels(outcome="discarded").inc()
        if webhook is None or webhook.disabled_at is not None:
            # Deleted or disabled, yet still listed for this event (a removal that
            # failed half-way): unlist it, so the scripts stop queueing for it.
            await timed(self.redis.srem(entry.target, entry.member))

    async def _delivered(self, webhook: Webhook, entry: Entry, attempt: Attempt) -> None:
        if await self.queue.finish(entry):
            metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
        if webhook.failing_since is not None:
            await self.webhooks.mark_healthy(webhook.id)
        await self._record(webhook, entry, attempt, "delivered")

    async def _failed(self, webhook: Webhook, entry: Entry, attempt: Attempt) -> None:
        window_ms = self.settings.webhook_retry_window_s * 1000
        failing_since = webhook.failing_since or await self.webhooks.mark_failing(webhook.id, entry.born_ms)
        now = _now_ms()
        attempts = entry.attempts + 1
        deadline = entry.born_ms + window_ms
        disable = failing_since is not None and now - failing_since.timestamp() * 1000 >= window_ms
        if now >= deadline or disable:
            if await self.queue.finish(entry):
                metrics.WEBHOOK_DELIVERIES.labels(outcome="dropped").inc()
                log.info("webhook delivery dropped after %d attempts", attempts,
                         extra={"webhook": webhook.id, "delivery": entry.delivery_id})
            await self._record(webhook, entry, attempt, "dropped")
            if disable:
                assert failing_since is not None
                await self._disable(webhook, failing_since, attempt)
            return
        due = min(now + retry_delay_ms(attempts, self.settings.webhook_retry_base_ms), deadline)
        if await self.queue.reschedule(entry, due, attempts):
            metrics.WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
        await self._record(webhook, entry, attempt, "failed", retry_at=due)

    async def _disable(self, webhook: Webhook, failing_since: datetime, attempt: Attempt) -> None:
        reason = (f"disabled: every delivery failed for {_span(self.settings.webhook_retry_window_s)} "
                  f"(failing since {rfc3339(failing_since)}); last error: {attempt.error}")
        if await self.webhooks.disable(webhook.id, reason):
            metrics.WEBHOOK_DISABLED.inc()
            log.warning("webhook disabled", extra={"webhook": webhook.id, "agent": webhook.agent_id})
            await unlist_targets(self.redis, webhook)

    async def _record(self, webhook: Webhook, entry: Entry, attempt: Attempt, outcome: str,
                      retry_at: int | None = None) -> None:
        result: dict[str, Any] = {
            "delivery": entry.delivery_id, "event": entry.kind, "attempt": entry.attempts + 1,
            "at": rfc3339(datetime.now(UTC)), "outcome": outcome, "status": attempt.status,
            "duration_ms": round(attempt.seconds * 1000),
        }
        if attempt.error:
            result["error"] = attempt.error
        if retry_at is not None:
            result["retry_at"] = rfc3339(datetime.fromtimestamp(retry_at / 1000, UTC))
        await self.queue.record(webhook.id, result)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _span(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"

