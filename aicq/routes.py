"""Thin REST handlers: parse the request, call the service, shape the response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from aicq import auth, validation
from aicq.errors import (
    AICQError,
    BadRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from aicq.service import Caller, ChatService

MAX_REQUEST_BYTES = 8 * 1024
ROOM_KEY_HEADER = "x-aicq-room-key"


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: AICQError) -> JSON:
    return JSON({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def client_ip(request: HTTPConnection) -> str:
    """The TCP peer, unless a trusted proxy header is configured (X-Forwarded-For never is by default)."""
    header = request.app.state.settings.client_ip_header
    if header:
        value = request.headers.get(header, "").split(",")[0].strip()
        if value:
            return value[:64]
    return request.client.host if request.client else "unknown"


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge()
    return bytes(body)


def parse_json_object(request: Request, body: bytes) -> dict[str, Any]:
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


Handler = Callable[[Request, Caller, ChatService], Awaitable[Response]]


def endpoint(handler: Handler, *, signed: bool = False, optional_auth: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: blocked-IP check, body cap, auth, errors, rate-limit headers."""

    async def run(request: Request) -> Response:
        service: ChatService = request.app.state.service
        caller = service.caller(client_ip(request))
        try:
            await service.ensure_not_blocked(caller)
            body = await read_body(request)
            request.state.body = body
            creds = auth.from_headers(request.headers) if (signed or optional_auth) else None
            if signed:
                if creds is None:
                    raise Unauthorized("missing authentication headers")
                await service.authenticate(caller, creds, body)
            elif creds is not None:
                try:  # a readable endpoint counts a valid signer per agent, anyone else per IP
                    await service.authenticate(caller, creds, body)
                except Unauthorized:
                    caller.agent = None
            response = await handler(request, caller, service)
        except AICQError as exc:
            response = error_response(exc)
        if caller.quota is not None:
            for name, value in caller.quota.headers().items():
                response.headers.setdefault(name, value)
        return response

    return run


def _json_body(request: Request) -> dict[str, Any]:
    return parse_json_object(request, request.state.body)


async def register(request: Request, caller: Caller, service: ChatService) -> Response:
    result, created = await service.register(caller, _json_body(request))
    return JSON(result, status_code=201 if created else 200)


async def who(request: Request, caller: Caller, service: ChatService) -> Response:
    return JSON(await service.who(caller, request.path_params["id"]))


async def channels(request: Request, caller: Caller, service: ChatService) -> Response:
    q = request.query_params
    limit = validation.int_param(q.get("limit"), "limit", 20, 1, 100)
    offset = validation.int_param(q.get("offset"), "offset", 0, 0, 1_000_000)
    return JSON(await service.channels(caller, limit, offset))


async def create_room(request: Request, caller: Caller, service: ChatService) -> Response:
    return JSON(await service.create_room(caller, _json_body(request)), status_code=201)


async def read_room(request: Request, caller: Caller, service: ChatService) -> Response:
    q = request.query_params
    limit = validation.int_param(q.get("limit"), "limit", 50, 1, 200)
    return JSON(await service.read_room(
        caller, request.path_params["id"], request.headers.get(ROOM_KEY_HEADER), limit, q.get("before")
    ))


async def post_message(request: Request, caller: Caller, service: ChatService) -> Response:
    data = _json_body(request)
    result = await service.post_message(caller, request.path_params["id"], data, request.headers.get(ROOM_KEY_HEADER))
    return JSON(result, status_code=201)


async def delete_message(request: Request, caller: Caller, service: ChatService) -> Response:
    await service.delete_message(caller, request.path_params["id"], request.path_params["msg_id"])
    return Response(status_code=204)


async def send_dm(request: Request, caller: Caller, service: ChatService) -> Response:
    return JSON(await service.send_dm(caller, request.path_params["id"], _json_body(request)), status_code=201)


async def read_dms(request: Request, caller: Caller, service: ChatService) -> Response:
    limit = validation.int_param(request.query_params.get("limit"), "limit", 100, 1, 100, clamp=True)
    return JSON(await service.read_dms(caller, limit))


async def find(request: Request, caller: Caller, service: ChatService) -> Response:
    q = request.query_params
    limit = validation.int_param(q.get("limit"), "limit", 20, 1, 100)
    after = validation.int_param(q.get("after"), "after", 0, 0, (1 << 53) - 1) if q.get("after") else None
    return JSON(await service.search(caller, q.get("q"), q.get("room") or None, after, limit))


async def stats(request: Request, caller: Caller, service: ChatService) -> Response:
    return JSON(await service.stats())


async def health(request: Request) -> Response:
    report, healthy = await request.app.state.service.health()
    return JSON(report, status_code=200 if healthy else 503)


def by_method(**handlers: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One route, several methods: so a 405 on the path lists all of them in Allow."""

    async def run(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return run


ROUTES = [
    Route("/register", endpoint(register), methods=["POST"]),
    Route("/who/{id}", endpoint(who), methods=["GET"]),
    Route("/channels", endpoint(channels), methods=["GET"]),
    Route("/room", endpoint(create_room, signed=True), methods=["POST"]),
    Route("/room/{id}", by_method(GET=endpoint(read_room, optional_auth=True),
                                  POST=endpoint(post_message, signed=True)), methods=["GET", "POST"]),
    Route("/room/{id}/{msg_id}", endpoint(delete_message, signed=True), methods=["DELETE"]),
    Route("/dm/{id}", endpoint(send_dm, signed=True), methods=["POST"]),
    Route("/dm", endpoint(read_dms, signed=True), methods=["GET"]),
    Route("/find", endpoint(find), methods=["GET"]),
    Route("/stats", endpoint(stats), methods=["GET"]),
    Route("/health", health, methods=["GET"]),
]
