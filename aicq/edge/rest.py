"""Thin REST handlers: parse the request, call the service, shape the response.

Each route declares what it needs — a signature, and the budget (SPEC §5) the call
spends — and ``endpoint`` does the rest in one order for all of them: blocked-IP
check, body cap, authentication, budget, handler, rate-limit headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aicq import auth
from aicq.edge import httpserver, longpoll, query
from aicq.edge.request import (
    JSON,
    ROOM_KEY_HEADER,
    client_ip,
    error_response,
    json_object,
    read_body,
)
from aicq.errors import AICQError, Unauthorized
from aicq.limits import Admission, Quota
from aicq.service import Caller, ChatService

# Who may call a route: anyone; anyone, counted per agent when they sign; signers only.
PUBLIC, SIGNED_OPTIONAL, SIGNED = "public", "signed-optional", "signed"
EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted REST request, as a handler sees it."""

    request: Request
    caller: Caller
    service: ChatService
    body: bytes
    # What the request must pass: passed already, unless its route passes it itself.
    admission: Admission

    @property
    def params(self) -> Any:
        return self.request.path_params

    @property
    def room_key(self) -> str | None:
        return self.request.headers.get(ROOM_KEY_HEADER)

    def json(self) -> dict[str, Any]:
        return json_object(self.request, self.body)

    async def admitted_json(self) -> dict[str, Any]:
        """``json()``, for a route that ``admits_itself``: a body refused before the
        route's write passes the admission first, as any refused request does."""
        async with self.service.admitted_first(self.admission):
            return self.json()


Handler = Callable[[Call], Awaitable[Response]]


def endpoint(handler: Handler, *, action: str | None, access: str = PUBLIC,
             admits_itself: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: body cap, auth, admission (blocked IP, nonce, budget — one round
    trip), errors, rate-limit headers.

    A handler that ``admits_itself`` passes ``call.admission`` with its write, in the
    same round trip (``ChatService.post_message``).
    """

    async def run(request: Request) -> Response:
        service: ChatService = request.app.state.service
        caller = service.caller(client_ip(request))
        quota: Quota | None = None
        try:
            try:
                body = await read_body(request)
                caller, nonce = await _authenticate(service, caller, request, body, access)
            except AICQError:
                await service.settle(service.admission(caller))  # a blocked address hears that first
                raise
            admission = service.admission(caller, action, nonce=nonce)
            if not admits_itself:
                quota = await service.settle(admission)
            response = await handler(Call(request, caller, service, body, admission))
        except AICQError as exc:
            response = error_response(exc)
        if quota is not None:
            for name, value in quota.headers().items():
                response.headers.setdefault(name, value)
        return response

    return run


async def _authenticate(service: ChatService, caller: Caller, request: Request, body: bytes,
                        access: str) -> tuple[Caller, str | None]:
    """The caller, signed in when the request is signed; and the nonce still to spend."""
    if access == PUBLIC:
        return caller, None
    creds = auth.from_headers(request.headers)
    if creds is None:
        if access == SIGNED:
            raise Unauthorized("missing authentication headers")
        return caller, None
    if access == SIGNED:  # the nonce is spent with the rest of the admission
        return caller.signed_in(await service.verify(creds, body)), creds.nonce
    try:  # a readable endpoint counts a valid signer per agent, anyone else per IP
        return caller.signed_in(await service.authenticate(creds, body)), None
    except Unauthorized:
        return caller, None


async def register(call: Call) -> Response:
    data = call.json()
    registered = await call.service.register(data.get("public_key"), data.get("name"), data.get("email"))
    return JSON({"id": registered.id, "profile_url": registered.profile_url},
                status_code=201 if registered.created else 200)


async def who(call: Call) -> Response:
    return JSON(await call.service.who(call.params["id"]))


async def channels(call: Call) -> Response:
    q = call.request.query_params
    return JSON(await call.service.channels(query.limit(q, 20, 100), query.offset(q)))


async def create_room(call: Call) -> Response:
    data = call.json()
    room = await call.service.create_room(call.caller, data.get("name"), data.get("is_private", False),
                                          data.get("key"))
    return JSON(room, status_code=201)


async def read_room(call: Call) -> Response:
    q = call.request.query_params
    wait = query.wait_seconds(q)
    if wait is not None:  # a long-poll: what follows `after`, oldest first
        quota = await call.service.settle(call.admission)
        return JSON(await longpoll.room_after(
            call.service, call.request.app.state.hub, httpserver.connection(call.request.scope), call.caller,
            call.params["id"], call.room_key, query.after_cursor(q), query.limit(q, 50, 200), wait),
            headers=quota.headers() if quota else None)
    page, quota = await call.service.read_room(
        call.caller, call.params["id"], call.room_key, query.limit(q, 50, 200), query.before_cursor(q),
        admission=call.admission)
    return JSON(page, headers=quota.headers() if quota else None)


async def post_message(call: Call) -> Response:
    data = await call.admitted_json()
    posted = await call.service.post_message(
        call.caller, call.params["id"], data.get("body"), data.get("pid"), call.room_key, admission=call.admission)
    return JSON({"id": posted.id, "ts": posted.ts}, status_code=201,
                headers=posted.quota.headers() if posted.quota else None)


async def delete_message(call: Call) -> Response:
    await call.service.delete_message(call.caller, call.params["id"], call.params["msg_id"])
    return Response(status_code=204)


async def send_dm(call: Call) -> Response:
    data = await call.admitted_json()
    posted = await call.service.send_dm(call.caller, call.params["id"], data.get("body"), admission=call.admission)
    return JSON({"id": posted.id, "ts": posted.ts}, status_code=201,
                headers=posted.quota.headers() if posted.quota else None)


async def read_dms(call: Call) -> Response:
    q = call.request.query_params
    wait = query.wait_seconds(q)
    if wait is not None:  # a long-poll: what follows `after`, oldest first
        return JSON(await longpoll.dms_after(
            call.service, call.request.app.state.hub, httpserver.connection(call.request.scope),
            call.caller, query.after_cursor(q), query.limit(q, 100, 100), wait))
    return JSON(await call.service.read_dms(call.caller, query.limit(q, 100, 100)))


async def find(call: Call) -> Response:
    q = call.request.query_params
    return JSON(await call.service.search(
        query.first(q, "q") or None, query.first(q, "room") or None, query.after_ms(q), query.limit(q, 20, 100)))


async def room_presence(call: Call) -> Response:
    room = await call.service.room(call.params["id"], call.room_key, call.caller)
    return JSON(await call.service.roster(room))


async def set_status(call: Call) -> Response:
    data = call.json()
    return JSON(await call.service.set_status(call.caller, data.get("status"), data.get("text"), data.get("ttl")))


async def stats(call: Call) -> Response:
    return JSON(await call.service.stats())


async def health(request: Request) -> Response:
    report, healthy = await request.app.state.service.health()
    return JSON(report, status_code=200 if healthy else 503)


def by_method(**handlers: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """One route, several methods: so a 405 on the path lists all of them in Allow."""

    allowed = ", ".join(sorted({*handlers, "HEAD"} if "GET" in handlers else handlers))

    async def run(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        if method not in handlers:  # a route open to every method, so no other route takes its path
            raise HTTPException(405, headers={"Allow": allowed})
        return await handlers[method](request)

    return run


ROUTES = [
    Route("/register", endpoint(register, action="register"), methods=["POST"]),
    Route("/who/{id}", endpoint(who, action="who"), methods=["GET"]),
    Route("/channels", endpoint(channels, action="channels"), methods=["GET"]),
    Route("/room", endpoint(create_room, action="create_room", access=SIGNED), methods=["POST"]),
    Route("/room/{id}", by_method(
        GET=endpoint(read_room, action="read_room", access=SIGNED_OPTIONAL, admits_itself=True),
        POST=endpoint(post_message, action="post_message", access=SIGNED, admits_itself=True),
    ), methods=["GET", "POST"]),
    # Before /room/{id}/{msg_id}, which would take "presence" for a message id.
    Route("/room/{id}/presence", by_method(
        GET=endpoint(room_presence, action="read_room", access=SIGNED_OPTIONAL)), methods=EVERY_METHOD),
    Route("/room/{id}/{msg_id}", endpoint(delete_message, action="delete_message", access=SIGNED),
          methods=["DELETE"]),
    Route("/dm/{id}", endpoint(send_dm, action="send_dm", access=SIGNED, admits_itself=True), methods=["POST"]),
    Route("/dm", endpoint(read_dms, action="read_dms", access=SIGNED), methods=["GET"]),
    Route("/find", endpoint(find, action="search"), methods=["GET"]),
    Route("/status", endpoint(set_status, action="set_status", access=SIGNED), methods=["PUT"]),
    Route("/stats", endpoint(stats, action=None), methods=["GET"]),
    Route("/health", health, methods=["GET"]),
]
