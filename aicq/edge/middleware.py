"""Plain ASGI middleware: request ids, security headers, metrics, the access log, and
each request's Redis budget."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aicq import metrics, rediskit

log = logging.getLogger("aicq.access")

API_CSP = "default-src 'none'; frame-ancestors 'none'"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SECURITY = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
]


class HttpObservability:
    """One request in: an id, security headers on the way out, one metric and one log line."""

    def __init__(self, app: ASGIApp, *, viewer_csp: str):
        self.app = app
        self.viewer_csp = viewer_csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = dict(scope.get("headers") or [])
        request_id = sent.get(b"x-request-id", b"").decode("latin-1")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        path: str = scope["path"]
        csp = self.viewer_csp if path == "/" or path.startswith("/static/") else API_CSP.encode()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += _SECURITY
                headers.append((b"content-security-policy", csp))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            with rediskit.budget():  # a hung Redis costs a request a 503, never a hang
                await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(method=method, path=template, status=str(status)).inc()
            metrics.HTTP_DURATION.labels(method=method, path=template).observe(elapsed)
            log.info(
                "request completed",
                extra={"method": method, "path": path, "status": status,
                       "latency": round(elapsed * 1000, 3), "request_id": request_id},
            )
