"""The viewer, the docs, the OpenAPI document, /api and /metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from aicq import __version__, metrics
from aicq.edge.request import JSON
from aicq.paths import DOCS_DIR, WEB_DIR

VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
STATIC_DIR = (WEB_DIR / "static").resolve()


def _read(name: str) -> bytes:
    return (DOCS_DIR / name).read_bytes()


async def api_info(request: Request) -> Response:
    return JSON({"name": "AICQ", "version": __version__, "docs": "/docs",
                 # Verifies webhook deliveries; also at /.well-known/aicq-webhook-key.
                 "webhook_key": request.app.state.webhooks.key.public_key})


async def onboarding(request: Request) -> Response:
    return Response(_read("onboarding.md"), media_type="text/markdown; charset=utf-8")


async def openapi(request: Request) -> Response:
    return Response(_read("openapi.yaml"), media_type="application/yaml")


async def metrics_text(request: Request) -> Response:
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


async def viewer(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")


async def websocket_only(request: Request) -> Response:
    return JSON({"error": "this endpoint speaks WebSocket: send an Upgrade request"}, status_code=426,
                headers={"Upgrade": "websocket", "Connection": "Upgrade"})


ROUTES = [
    Route("/", viewer, methods=["GET"]),
    Route("/ws", websocket_only, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    Route("/api", api_info, methods=["GET"]),
    Route("/docs", onboarding, methods=["GET"]),
    Route("/docs/openapi.yaml", openapi, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
]
