"""create_app(settings): lifespan (stores, migrations, fan-out), middleware, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from aicq import migrate, rediskit, shutdown
from aicq.edge import notifications, rest, session, sse, web
from aicq.edge.connections import SessionSlots
from aicq.edge.middleware import HttpObservability
from aicq.edge.request import error_response
from aicq.errors import AICQError, MethodNotAllowed, NotFound
from aicq.fanout import Hub
from aicq.history import History
from aicq.limits import Limiter
from aicq.presence import Presence
from aicq.redislane import Lane
from aicq.service import ChatService
from aicq.settings import Settings
from aicq.store import Store
from aicq.webhooks.runtime import Webhooks
from aicq.webhooks.worker import STOP_GRACE_S

log = logging.getLogger("aicq")

CORS_ALLOWED_HEADERS = [
    "Content-Type", "X-AICQ-Agent", "X-AICQ-Nonce", "X-AICQ-Timestamp", "X-AICQ-Signature",
    "X-AICQ-Room-Key", "X-Request-ID", "Last-Event-ID",
]
CORS_EXPOSED_HEADERS = [
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Request-ID",
]


async def _connect_store(url: str, attempts: int = 30) -> Store:
    """The database may still be starting next to us (a deploy, CI): wait for it, briefly."""
    for attempt in range(attempts):
        try:
            store = await Store.connect(url)
            async with store.pool.acquire() as conn:
                applied = await migrate.up(conn)
            if applied:
                log.info("applied migrations %s", applied)
            return store
        except (OSError, asyncpg.CannotConnectNowError) as exc:  # still starting up
            if attempt == attempts - 1:
                raise
            log.warning("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def _base_url(settings: Settings) -> str:
    """Where a browser on this machine finds the service (a wildcard address is not a URL)."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


class WebSocketFront:
    """Routes ``/ws`` straight to its session; everything else to the Starlette app.

    None of the HTTP middleware does anything for a WebSocket, so the upgrade skips
    it: the session's endpoint accepts and hands the connection to its Socket (see
    edge/wsserver), and no layer stays around for the connection's life.
    """

    def __init__(self, app: Starlette):
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self.app
            await session.endpoint(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings) -> WebSocketFront:
    assert settings.database_url and settings.redis_url, "serve resolves the store URLs first"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = await _connect_store(settings.database_url)
        redis = rediskit.connect(settings.redis_url)
        await redis.ping()
        lane = Lane(settings.redis_url)  # the hot path's scripts (aicq/redislane.py)
        history = History(redis, lane)
        presence = Presence(redis, settings)
        service = ChatService(settings, store, history,
                              Limiter(redis, lane, auto_block=settings.auto_block_enabled), presence)
        hub = Hub(settings.redis_url, history, roster=presence.store.roster)
        await hub.start()
        await presence.start()
        webhooks = await Webhooks.start(settings, store, redis, service)
        app.state.service = service
        app.state.hub = hub
        app.state.webhooks = webhooks
        app.state.sessions = sessions = session.Registry(settings.ws_heartbeat)
        sessions.start()
        counts = asyncio.create_task(service.flush_counts_forever(), name="aicq-counts")
        base = _base_url(settings)
        log.info("AICQ ready: viewer %s/ and docs %s/docs (listening on %s:%s, instance %s)",
                 base, base, settings.host, settings.port, settings.instance)
        watchdog = shutdown.Watchdog(shutdown.drain_s(settings.shutdown_timeout))
        with shutdown.armed_on_signals(watchdog):
            try:
                yield
            finally:
                # uvicorn has drained the connections (every session was sent 1012);
                # the rest gets shutdown.STOP_S, whatever hangs.
                steps = shutdown.Steps()
                # Attempts in flight finish meanwhile; the worker holds on to the stores till then.
                delivering = asyncio.create_task(webhooks.stop(grace=min(STOP_GRACE_S, steps.remaining() / 2)),
                                                 name="aicq-webhooks-stop")
                await steps.run("message counts", shutdown.cancel_and_wait(counts))
                await steps.run("sessions", sessions.stop(timeout=steps.remaining() / 2))  # leave the hub
                await steps.run("presence", presence.stop())
                await steps.run("webhooks", delivering)
                await steps.run("hub", hub.stop())
                service.keys.close()
                await steps.run("redis", redis.aclose())
                await steps.run("redis lane", lane.close())
                await steps.run("store", store.close())

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            error: AICQError = NotFound() if exc.status_code == 404 else (
                MethodNotAllowed() if exc.status_code == 405 else AICQError(str(exc.detail))
            )
            if exc.status_code not in (404, 405):
                error.status = exc.status_code
            error.headers = dict(exc.headers or {})  # 405 carries Allow
            return error_response(error)
        log.exception("unhandled error", exc_info=exc)
        return error_response(AICQError())

    app = Starlette(
        routes=[*rest.ROUTES, *notifications.ROUTES, *sse.ROUTES, *web.ROUTES,
                WebSocketRoute("/ws", session.endpoint)],
        middleware=[
            Middleware(HttpObservability, viewer_csp=web.VIEWER_CSP),
            Middleware(
                CORSMiddleware,
                allow_origins=["*"],
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=CORS_ALLOWED_HEADERS,
                expose_headers=CORS_EXPOSED_HEADERS,
                max_age=600,
            ),
        ],
        exception_handlers={HTTPException: on_error, Exception: on_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_slots = SessionSlots(settings.max_sessions_per_ip)
    return WebSocketFront(app)
