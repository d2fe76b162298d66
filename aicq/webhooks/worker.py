"""The delivery worker: every instance runs one, and the consumer group shares the work.

It reads entries while it holds fewer than ``CONCURRENCY`` (an entry is held from its
read until it is acked, rescheduled or parked). An event entry is expanded into its
deliveries at once. A delivery then waits for its endpoint's turn: at most
``PER_WEBHOOK`` attempts to one endpoint at a time, at most ``PER_WEBHOOK_HELD`` of its
deliveries held here; the rest are parked (parking.py) until the endpoint frees up,
so slow endpoints take a few slots each, never all of them. A maintenance tick keeps
the rest moving: it refreshes the claim on held entries, takes over entries whose
instance died (XAUTOCLAIM after ``WEBHOOK_CLAIM_IDLE_MS``), puts due retries back into
the stream, releases parked deliveries whose endpoint's hold is over, and samples
the queue gauges.

Retries back off per endpoint: after a failed round an endpoint is left alone for
``WEBHOOK_RETRY_BASE_MS`` × 2^(n-1) (n: failed rounds in a row; at most an hour, a
little jitter); the failed delivery is retried then, and deliveries arriving
meanwhile are parked. A delivery is given up (dropped, counted) when an attempt
fails ``WEBHOOK_RETRY_WINDOW_S`` or more after its event; its last attempt happens at
that deadline, hold or not. An endpoint is *failing since* the event of its oldest
delivery that failed (no success since); once that is a whole window ago it is
disabled, and what is parked for it is dropped.

Delivery never touches the post path: posting XADDs one entry per event inside its
own script, and everything here runs in this worker's tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from aicq import metrics
from aicq.cache import LRU
from aicq.errors import AICQError
from aicq.models import rfc3339
from aicq.rediskit import timed
from aicq.settings import Settings
from aicq.shutdown import cancel_and_wait
from aicq.webhooks.model import Webhook
from aicq.webhooks.parking import Parking
from aicq.webhooks.queue import DeliveryQueue, Entry
from aicq.webhooks.registry import unlist_targets
from aicq.webhooks.sender import MAX_CONNECTIONS, Attempt, Sender
from aicq.webhooks.store import WebhookStore

log = logging.getLogger("aicq.webhooks")

# Entries held at once (attempting, or waiting for their endpoint's turn). An endpoint
# that times out or fails goes on hold and holds nothing more; only endpoints that are
# slow *and* answer keep slots busy, at most PER_WEBHOOK_HELD each.
CONCURRENCY = MAX_CONNECTIONS
PER_WEBHOOK = 4  # attempts at once to one endpoint (that answered in the last PROVEN_S)
PROVEN_S = 300.0
PER_WEBHOOK_HELD = 8  # deliveries of one endpoint held at once; more are parked
BLOCK_MS = 1000
# An expansion is one script doing work per webhook (up to a millisecond for a room
# with a hundred): a few at a time, so other Redis clients never queue behind many.
EXPANDING = 2
SWEEP_SAMPLE = 32  # endpoints with parked deliveries looked at per tick
GAUGE_EVERY_S = 2.0
PRUNE_EVERY_S = 600.0
STOP_GRACE_S = 2.0  # within the shutdown's budget (shutdown.STOP_S)
INTERRUPTED_LOG_S = 5.0


class _Lane:
    """One endpoint's share of this instance: how many deliveries it holds, and whose
    turn it is. ``width`` attempts go at once: PER_WEBHOOK once the endpoint has
    answered lately, else one (a slow start: an endpoint that hangs costs one timeout
    per round, not PER_WEBHOOK of them)."""

    __slots__ = ("active", "changed", "held")

    def __init__(self) -> None:
        self.held = 0
        self.active = 0
        self.changed = asyncio.Condition()

    @asynccontextmanager
    async def turn(self, width: Callable[[], int]) -> AsyncIterator[None]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.active < width())
            self.active += 1
        try:
            yield
        finally:
            async with self.changed:
                self.active -= 1
                self.changed.notify_all()


class DeliveryWorker:
    def __init__(self, settings: Settings, redis: aioredis.Redis, webhooks: WebhookStore, sender: Sender):
        self.settings = settings
        self.redis = redis
        self.queue = DeliveryQueue(redis, settings.instance)
        self.parking = Parking(redis)
        self.webhooks = webhooks
        self.sender = sender
        self.window_ms = settings.webhook_retry_window_s * 1000
        self._held: dict[str, asyncio.Task[None]] = {}  # entry id -> its handling
        self._lanes: dict[str, _Lane] = {}
        self._expanding = asyncio.Semaphore(EXPANDING)
        self._answered: LRU = LRU(10_000)  # webhook id -> when it last took a delivery
        self._interruptions, self._last_interruption_log = 0, 0.0
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.tick_s = max(0.05, min(settings.webhook_claim_idle_ms / 4, settings.webhook_retry_base_ms / 2,
                                    1000) / 1000)

    async def start(self) -> None:
        await self.queue.ensure_group()
        self._tasks = [asyncio.create_task(self._consume(), name="aicq-webhooks-consume"),
                       asyncio.create_task(self._maintain(), name="aicq-webhooks-maintain")]

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop reading; let attempts in flight finish for ``grace`` seconds at most. An
        entry still held after that is abandoned: it stays pending, and another instance
        takes it over once its claim goes stale."""
        await cancel_and_wait(*self._tasks)
        if self._held:
            await asyncio.wait(list(self._held.values()), timeout=grace)
        await cancel_and_wait(*self._held.values())

    # Reading

    async def _consume(self) -> None:
        pause = 0.1
        while True:
            try:
                await self._room.wait()
                self._spawn(await self.queue.read(CONCURRENCY - len(self._held), BLOCK_MS))
                pause = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: the entries wait in the stream
                log.warning("webhook queue unavailable (%s: %s)", type(exc).__name__, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _spawn(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.entry_id in self._held:
                continue  # claimed back while we are still at it
            task = asyncio.create_task(self._handle(entry))
            self._held[entry.entry_id] = task
            task.add_done_callback(lambda _, entry_id=entry.entry_id: self._done(entry_id))
        if len(self._held) >= CONCURRENCY:
            self._room.clear()

    def _done(self, entry_id: str) -> None:
        self._held.pop(entry_id, None)
        if len(self._held) < CONCURRENCY:
            self._room.set()

    async def _maintain(self) -> None:
        last_gauges = last_prune = 0.0
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.queue.heartbeat(list(self._held))
                room = CONCURRENCY - len(self._held)
                if room > 0:
                    self._spawn(await self.queue.claim_stale(self.settings.webhook_claim_idle_ms, room))
                await self.queue.move_due()
                await self._sweep()
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

    async def _sweep(self) -> None:
        """Release one parked delivery of each endpoint whose backlog nothing else will
        wake: no hold (nor a probe due after one), nothing here delivering to it. Its
        success releases more."""
        for webhook_id in await self.parking.with_parked(SWEEP_SAMPLE):
            if webhook_id not in self._lanes and await self.parking.held_until(webhook_id) is None:
                await self.parking.unpark(webhook_id, 1)

    async def _sample(self) -> None:
        depth = await self.queue.depth()
        metrics.WEBHOOK_QUEUE_DEPTH.labels(state="ready").set(depth.ready)
        metrics.WEBHOOK_QUEUE_DEPTH.labels(state="scheduled").set(depth.scheduled)
        metrics.WEBHOOK_QUEUE_DEPTH.labels(state="parked").set(depth.parked)
        age = 0.0 if depth.oldest_ms is None else max(0.0, time.time() - depth.oldest_ms / 1000)
        metrics.WEBHOOK_OLDEST_PENDING.set(age)
        metrics.WEBHOOK_OVERFLOW.set(depth.overflow)

    # Delivering

    async def _handle(self, entry: Entry) -> None:
        try:
            if not entry.expanded:
                async with self._expanding:
                    await self.queue.expand(entry)  # its deliveries join the stream for any instance
                return
            webhook = await self.webhooks.get(entry.webhook_id, cached=True)
            if webhook is None or webhook.disabled_at is not None:
                await self._discard(entry, webhook)
                return
            await self._deliver(webhook, entry)
        except asyncio.CancelledError:
            raise
        except (AICQError, OSError, aioredis.RedisError) as exc:
            # A store went away mid-way: the entry stays pending, and is taken over
            # (by us or another instance) once its claim goes stale.
            self._interrupted(exc)
        except Exception:
            log.exception("webhook delivery failed unexpectedly")

    def _interrupted(self, exc: BaseException) -> None:
        """Say so once per INTERRUPTED_LOG_S, with a count: an outage interrupts hundreds."""
        self._interruptions += 1
        now = time.monotonic()
        if now - self._last_interruption_log >= INTERRUPTED_LOG_S:
            log.warning("webhook deliveries interrupted (%d; last: %s: %s); they will be taken over",
                        self._interruptions, type(exc).__name__, exc)
            self._interruptions, self._last_interruption_log = 0, now

    async def _deliver(self, webhook: Webhook, entry: Entry) -> None:
        lane = self._lanes.setdefault(webhook.id, _Lane())
        if lane.held >= PER_WEBHOOK_HELD:
            await self.parking.park(entry)
            return
        lane.held += 1
        try:
            # The outcome is settled before the turn passes on: after a failure, the
            # next delivery waiting here finds the endpoint on hold and is parked.
            async with lane.turn(lambda: self._width(webhook.id)):
                if await self._on_hold(webhook, entry):
                    await self.parking.park(entry)
                    return
                attempt = await self.sender.send(webhook.url, entry, entry.attempts + 1)
                metrics.WEBHOOK_ATTEMPT_DURATION.observe(attempt.seconds)
                if entry.attempts:
                    metrics.WEBHOOK_RETRIES.inc()
                if attempt.ok:
                    await self._delivered(webhook, entry, attempt)
                else:
                    await self._failed(webhook, entry, attempt)
        finally:
            lane.held -= 1
            if not lane.held:
                del self._lanes[webhook.id]

    def _width(self, webhook_id: str) -> int:
        answered = self._answered.get(webhook_id)
        return PER_WEBHOOK if answered is not None and time.monotonic() - answered < PROVEN_S else 1

    async def _on_hold(self, webhook: Webhook, entry: Entry) -> bool:
        """Whether the endpoint failed lately and is left alone for now. A delivery at
        the end of its window gets its last attempt whatever the hold."""
        until = await self.parking.held_until(webhook.id)
        now = _now_ms()
        return until is not None and until > now and now < entry.born_ms + self.window_ms

    async def _discard(self, entry: Entry, webhook: Webhook | None) -> None:
        if await self.queue.finish(entry):
            metrics.WEBHOOK_DELIVERIES.labels(outcome="discarded").inc()
        if webhook is None or webhook.disabled_at is not None:
            # Deleted or disabled, yet still listed for this event (a removal that
            # failed half-way): unlist it, so the scripts stop queueing for it.
            await timed(self.redis.srem(entry.target, entry.member))

    async def _delivered(self, webhook: Webhook, entry: Entry, attempt: Attempt) -> None:
        self._answered.put(webhook.id, time.monotonic())
        if await self.queue.finish(entry):
            metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
        if webhook.failing_since is not None:
            await self.webhooks.mark_healthy(webhook.id)
        # One done, two parked back: a backlog ramps up to the endpoint's share, then
        # flows at its pace.
        await self._record(webhook, entry, attempt, "delivered", release=2)

    async def _failed(self, webhook: Webhook, entry: Entry, attempt: Attempt) -> None:
        # What PostgreSQL will say once told (coalesce(failing_since, this event)); the
        # hold goes first, the database after.
        failing_since = webhook.failing_since or datetime.fromtimestamp(entry.born_ms / 1000, UTC)
        now = _now_ms()
        attempts = entry.attempts + 1
        deadline = entry.born_ms + self.window_ms
        disable = now - failing_since.timestamp() * 1000 >= self.window_ms
        if now >= deadline or disable:
            if await self.queue.finish(entry):
                metrics.WEBHOOK_DELIVERIES.labels(outcome="dropped").inc()
                log.info("webhook delivery dropped after %d attempts", attempts,
                         extra={"webhook": webhook.id, "delivery": entry.delivery_id})
            await self._record(webhook, entry, attempt, "dropped")
        else:
            due = await self.queue.failed(entry, attempts, base_ms=self.settings.webhook_retry_base_ms,
                                          deadline_ms=deadline, window_ms=self.window_ms)
            if due is not None:
                metrics.WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
                await self._record(webhook, entry, attempt, "failed", retry_at=due)
        if webhook.failing_since is None:
            failing_since = await self.webhooks.mark_failing(webhook.id, entry.born_ms) or failing_since
            disable = now - failing_since.timestamp() * 1000 >= self.window_ms
        if disable:
            await self._disable(webhook, failing_since, attempt)

    async def _disable(self, webhook: Webhook, failing_since: datetime, attempt: Attempt) -> None:
        reason = (f"disabled: every delivery failed for {_span(self.settings.webhook_retry_window_s)} "
                  f"(failing since {rfc3339(failing_since)}); last error: {attempt.error}")
        if await self.webhooks.disable(webhook.id, reason):
            metrics.WEBHOOK_DISABLED.inc()
            log.warning("webhook disabled", extra={"webhook": webhook.id, "agent": webhook.agent_id})
            await unlist_targets(self.redis, webhook)
            if dropped := await self.parking.drop(webhook.id):
                metrics.WEBHOOK_DELIVERIES.labels(outcome="dropped").inc(dropped)

    async def _record(self, webhook: Webhook, entry: Entry, attempt: Attempt, outcome: str,
                      retry_at: int | None = None, release: int = 0) -> None:
        result: dict[str, Any] = {
            "delivery": entry.delivery_id, "event": entry.kind, "attempt": entry.attempts + 1,
            "at": rfc3339(datetime.now(UTC)), "outcome": outcome, "status": attempt.status,
            "duration_ms": round(attempt.seconds * 1000),
        }
        if attempt.error:
            result["error"] = attempt.error
        if retry_at is not None:
            result["retry_at"] = rfc3339(datetime.fromtimestamp(retry_at / 1000, UTC))
        await self.parking.record(webhook.id, result, release=release)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _span(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
