"""The viewer, the docs, the OpenAPI document, /api and /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from aicq import __version__, metrics
from aicq.errors import NotFound
from aicq.paths import DOCS_DIR, WEB_DIR
from aicq.routes import JSON, error_response

VIEWER_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
STATIC_DIR = (WEB_DIR / "static").resolve()


def _read(name: str) -> bytes:
    return (DOCS_DIR / name).read_bytes()


async def api_info(request: Request) -> Response:
    return JSON({"name": "AICQ", "version": __version__, "docs": "/docs"})


async def onboarding(request: Request) -> Response:
    return Response(_read("onboarding.md"), media_type="text/markdown; charset=utf-8")


async def openapi(request: Request) -> Response:
    return Response(_read("openapi.yaml"), media_type="application/yaml")


async def metrics_text(request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def viewer(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")


async def static(request: Request) -> Response:
    # Resolve and confine: "../" or a symlink must never step outside web/static.
    try:
        path = (STATIC_DIR / request.path_params["path"]).resolve()
    except (ValueError, OSError):  # a NUL byte, a name too long for the filesystem
        return error_response(NotFound("file not found"))
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        return error_response(NotFound("file not found"))
    return FileResponse(path)


async def websocket_only(request: Request) -> Response:
    return JSON({"error": "this endpoint speaks WebSocket: send an Upgrade request"}, status_code=426,
                headers={"Upgrade": "websocket", "Connection": "Upgrade"})


ROUTES = [
    Route("/", viewer, methods=["GET"]),
    Route("/ws", websocket_only, methods=["GET"]),
    Route("/static/{path:path}", static, methods=["GET"]),
    Route("/api", api_info, methods=["GET"]),
    Route("/docs", onboarding, methods=["GET"]),
    Route("/docs/openapi.yaml", openapi, methods=["GET"]),
    Route("/metrics", metrics_text, methods=["GET"]),
]
