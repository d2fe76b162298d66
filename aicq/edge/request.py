"""The request edge every transport shares: who is calling, their body, JSON answers.

REST handlers, the WebSocket session, SSE and long-poll all start here, so the
client's address, the body cap and the shape of an error are decided once.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from aicq.errors import AICQError, BadRequest, PayloadTooLarge, UnsupportedMediaType

MAX_REQUEST_BYTES = 8 * 1024
ROOM_KEY_HEADER = "x-aicq-room-key"


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: AICQError) -> JSON:
    return JSON({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def client_ip(connection: HTTPConnection) -> str:
    """The TCP peer, unless a trusted proxy header is configured (X-Forwarded-For never is by default)."""
    header = connection.app.state.settings.client_ip_header
    if header:
        value = connection.headers.get(header, "").split(",")[0].strip()
        if value:
            return value[:64]
    return connection.client.host if connection.client else "unknown"


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past 8 KB (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge()
    return bytes(body)


def json_object(request: Request, body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object: 400 when empty or not an object, 415 when not JSON."""
    if not body.strip():
        raise BadRequest("request body must be a JSON object")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("JSON body must be an object")
    return data
