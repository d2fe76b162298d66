"""Several server processes on one port: `aicq serve --workers N` / `WEB_CONCURRENCY`.

uvicorn's supervisor binds the socket once and hands it to N spawned workers; the
kernel spreads connections over them. Each worker is a whole AICQ instance — its
own hub and pub/sub connection — and Redis pub/sub joins them as it joins machines.
The supervisor replaces a worker that dies (its sessions resume on the others) and
passes SIGTERM on, so every worker closes its sessions with 1012 and drains.

Metrics: prometheus-client's multiprocess mode. Every worker writes its values to
files in one directory, and /metrics on any worker sums them, so a scrape sees the
machine, not the worker that happened to answer.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any

import uvicorn

from aicq.settings import Settings

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def worker_app() -> Any:
    """The app of one worker (uvicorn calls this in each spawned process)."""
    from aicq import logs, metrics, serve
    from aicq.app import create_app

    settings = serve.load_settings()
    logs.configure(settings)
    metrics.forget_dead_workers()
    # Each worker is an instance of its own: /health, logs and the WS hello say which.
    settings = dataclasses.replace(settings, instance=f"{settings.instance}.{os.getpid()}")
    return create_app(settings)


def serve_workers(settings: Settings, workers: int, uvicorn_options: dict[str, Any]) -> None:
    """Run ``workers`` processes on ``settings``' address until SIGTERM/SIGINT.

    ``settings`` has its store URLs resolved already (embedded stores, if any, are
    the caller's and outlive the workers); they reach the workers through the
    environment, where every worker reads its settings.
    """
    assert workers > 1 and settings.database_url and settings.redis_url
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["REDIS_URL"] = settings.redis_url
    metrics_dir = tempfile.mkdtemp(prefix="aicq-metrics-")
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    try:
        uvicorn.run("aicq.workers:worker_app", factory=True, workers=workers, **uvicorn_options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
