"""Every Prometheus object, declared once (SPEC §8; the runbook's names).

With several workers (``aicq serve --workers N``) prometheus-client runs in its
multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker starts,
every worker writes its values there, and ``exposition`` sums them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

HTTP_REQUESTS = Counter(
    "aicq_http_requests_total", "HTTP requests by method, route template and status",
    ["method", "path", "status"], registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "aicq_http_request_duration_seconds", "HTTP request latency by method and route template",
    ["method", "path"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
AGENTS_REGISTERED = Counter(
    "aicq_agents_registered_total", "Agents registered", registry=REGISTRY,
)
MESSAGES_POSTED = Counter(
    "aicq_messages_posted_total", "Room messages accepted", ["room_type"], registry=REGISTRY,
)
DMS_SENT = Counter("aicq_dms_sent_total", "Direct messages accepted", registry=REGISTRY)
SEARCH_QUERIES = Counter("aicq_search_queries_total", "Search queries served", registry=REGISTRY)
RATE_LIMIT_HITS = Counter(
    "aicq_rate_limit_hits_total", "Requests refused by a rate limit", ["endpoint"], registry=REGISTRY,
)
BLOCKED_REQUESTS = Counter(
    "aicq_blocked_requests_total", "Requests refused from a blocked IP", ["reason"], registry=REGISTRY,
)
_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
REDIS_LATENCY = Histogram(
    "aicq_redis_latency_seconds", "Redis command latency", registry=REGISTRY, buckets=_STORE_BUCKETS,
)
POSTGRES_LATENCY = Histogram(
    "aicq_postgres_latency_seconds", "PostgreSQL query latency", registry=REGISTRY,
    buckets=_STORE_BUCKETS,
)
WS_SESSIONS = Gauge("aicq_ws_sessions", "Open WebSocket sessions", registry=REGISTRY,
                    multiprocess_mode="livesum")
WS_EVENTS_DELIVERED = Counter(
    "aicq_ws_events_delivered_total", "Events handed to WebSocket sessions", registry=REGISTRY,
)
WS_WRITES = Counter(
    "aicq_ws_writes_total", "Writes of live events to WebSocket sessions (each carries one or more events)",
    registry=REGISTRY,
)
WS_SLOW_DISCONNECTS = Counter(
    "aicq_ws_slow_disconnects_total", "Sessions closed with 1013 for falling behind",
    registry=REGISTRY,
)
WS_DELIVERY_LATENCY = Histogram(
    "aicq_ws_delivery_latency_seconds",
    "Live events: Redis publish until every local subscriber has been handed the frames",
    registry=REGISTRY,
    # Fine around 5-20 ms: that is where fanning out to thousands of sessions lands.
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025,
             0.05, 0.1, 0.25, 0.5, 1),
)
PRESENCE_ENTRIES = Gauge(
    "aicq_presence_entries", "Presence entries this instance holds in Redis (agent in a room, readers of a room)",
    registry=REGISTRY, multiprocess_mode="livesum",
)
PRESENCE_RENEWALS = Counter(
    "aicq_presence_renewals_total", "Presence lease renewals (one script each, whatever the sessions)",
    registry=REGISTRY,
)
SSE_STREAMS = Gauge("aicq_sse_streams", "Open Server-Sent Events streams", registry=REGISTRY,
                    multiprocess_mode="livesum")
SSE_SLOW_DISCONNECTS = Counter(
    "aicq_sse_slow_disconnects_total", "SSE streams dropped for falling behind their byte bound",
    registry=REGISTRY,
)
LONGPOLL_WAITING = Gauge(
    "aicq_longpoll_waiting", "Long-poll requests holding for a message", registry=REGISTRY,
    multiprocess_mode="livesum",
)

# Mentions and webhooks (aicq/mentions.py, aicq/webhooks/)
MENTIONS_RECORDED = Counter(
    "aicq_mentions_total", "Agents mentioned in room messages (one per mentioned agent)",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "aicq_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (will be retried), dropped "
    "(gave up after the retry window), discarded (endpoint deleted or disabled)",
    ["outcome"], registry=REGISTRY,
)
WEBHOOK_RETRIES = Counter(
    "aicq_webhook_retries_total", "Webhook delivery attempts that were retries", registry=REGISTRY,
)
WEBHOOK_DISABLED = Counter(
    "aicq_webhook_endpoints_disabled_total", "Webhook endpoints disabled after failing for the retry window",
    registry=REGISTRY,
)
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "aicq_webhook_attempt_duration_seconds", "One webhook delivery attempt: resolve, connect, POST, answer",
    registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WEBHOOK_QUEUE_DEPTH = Gauge(
    "aicq_webhook_queue_depth",
    "Webhook deliveries waiting, cluster-wide: ready (in the stream: events to expand, deliveries "
    "due or in flight), scheduled (waiting for a retry), parked (waiting for their endpoint)",
    ["state"], registry=REGISTRY,
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "aicq_webhook_oldest_pending_seconds",
    "Age of the oldest event with a delivery still pending (ready or scheduled), cluster-wide",
    registry=REGISTRY,
)
WEBHOOK_OVERFLOW = Gauge(
    "aicq_webhook_queue_overflow",
    "Webhook events and deliveries refused because the queue, or one endpoint's backlog, was full "
    "(a Redis counter, cluster-wide)",
    registry=REGISTRY,
)


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def exposition() -> bytes:
    """The metrics text: this process's, or every worker's summed."""
    directory = _multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without saying so (SIGKILL, OOM).

    A worker that exits cleanly is forgotten by the supervisor's replacement of it
    too: each new worker runs this once at start.
    """
    directory = _multiprocess_dir()
    if directory is None:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        match = re.search(r"_(\d+)\.db$", path.name)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
