"""`aicq serve`: resolve settings, start embedded stores if needed, run uvicorn."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from aicq import logs, protocol
from aicq.embedded import EmbeddedStores, silence_platformdirs_warning
from aicq.settings import Settings, SettingsError

log = logging.getLogger("aicq")


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"aicq: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def with_stores(settings: Settings, embedded: EmbeddedStores) -> Settings:
    """Fill in whichever store URL is missing with an embedded server."""
    database_url = settings.database_url
    redis_url = settings.redis_url
    if not database_url or not redis_url:
        silence_platformdirs_warning()
    if not database_url:
        database_url = embedded.start_postgres()
    if not redis_url:
        redis_url = embedded.start_redis()
    return dataclasses.replace(settings, database_url=database_url, redis_url=redis_url)


def uvicorn_options(settings: Settings, *, lifespan: str = "on") -> dict[str, Any]:
    """How AICQ runs uvicorn (one process or several); tests/test_uvicorn_contract.py
    runs the same."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": "aicq.edge.httpserver:AICQHttpProtocol",
        "ws": "aicq.edge.wsserver:AICQWebSocketProtocol",
        "ws_max_size": protocol.MAX_FRAME_BYTES,
        "ws_per_message_deflate": False,  # protocol.text_frame writes frames without extensions
        "ws_ping_interval": settings.ws_heartbeat,
        "ws_ping_timeout": settings.ws_heartbeat,
        "proxy_headers": False,
        "server_header": False,
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "lifespan": lifespan,
    }


def uvicorn_config(app: ASGIApp, settings: Settings, *, lifespan: str = "on") -> uvicorn.Config:
    return uvicorn.Config(app, **uvicorn_options(settings, lifespan=lifespan))


class _Stop(SystemExit):
    """SIGTERM/SIGINT outside uvicorn's own handling: unwind so the stores stop too."""


def _stop_on_signal(signum: int, frame: object) -> None:
    raise _Stop(0)


def run() -> None:
    # uvicorn drains on SIGTERM, restores the previous handler and re-raises the
    # signal; with this handler in place that unwinds here instead of killing the
    # process, so the embedded servers are always shut down with it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_on_signal)
    settings = load_settings()
    logs.configure(settings)
    embedded = EmbeddedStores(settings.data_dir)
    try:
        settings = with_stores(settings, embedded)
        if settings.workers > 1:
            from aicq.workers import serve_workers

            log.info("starting %d workers on port %d", settings.workers, settings.port)
            serve_workers(settings, settings.workers, uvicorn_options(settings))
            return
        from aicq.app import create_app  # after logging is configured

        uvicorn.Server(uvicorn_config(create_app(settings), settings)).run()
    finally:
        embedded.stop()
        log.info("AICQ stopped")
