"""``GET /events``: live rooms and DMs as Server-Sent Events, for clients without a WebSocket.

The request is admitted like a REST call (blocked IPs, signature, budgets), then
answered with a stream (``sse_stream.Stream``) that never ends by itself:

- ``rooms``: room UUIDs or public room names, comma-separated (at most 100);
  ``dms=1`` adds the caller's DMs, which needs a signed request (as ``GET /dm``).
- Resume: ``Last-Event-ID`` (sent by browsers' ``EventSource`` on their own), else
  ``since``: history after it, then live. A resuming stream spends the budgets a
  WebSocket resume spends: ``read_room`` per room, and ``read_dms`` for the DMs.
- Private rooms: ``X-AICQ-Room-Key``. With one room, the header is its key, as for
  ``GET /room/{id}``. With several, it lists ``<room>=<key>`` pairs, comma-separated
  (one header, or one header per room), ``<room>`` spelled as in ``rooms`` and the
  key percent-encoded (RFC 3986) so that commas and ``=`` in keys survive; pairs
  for public rooms or rooms not in the stream are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aicq import auth, metrics
from aicq.edge import httpserver, query, sse_wire
from aicq.edge.connections import SessionSlots, TooManySessions
from aicq.edge.request import ROOM_KEY_HEADER, error_response
from aicq.edge.rest import SIGNED_OPTIONAL, Call, endpoint
from aicq.edge.session import MAX_SUBSCRIPTIONS
from aicq.edge.sse_stream import Stream
from aicq.edge.sse_wire import Cursor
from aicq.edge.wsserver import CLOSE_DEADLINE_S
from aicq.errors import AICQError, BadRequest, Forbidden, Unauthorized, Unavailable
from aicq.limits import Quota
from aicq.models import Room
from aicq.service import Caller

log = logging.getLogger("aicq.sse")

MAX_ROOMS = MAX_SUBSCRIPTIONS  # as many as one WebSocket session may follow
# EventSource waits this long before reconnecting; spread, so that the readers of an
# instance that restarts do not all come back in the same instant.
RETRY_MS = (1000, 3000)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DMS_VALUES = {"": False, "0": False, "false": False, "1": True, "true": True}


def room_refs(request: Request) -> list[str]:
    """The rooms asked for, as spelled, without repeats; empty entries do not count."""
    refs = [part for part in ",".join(request.query_params.getlist("rooms")).split(",") if part]
    if len(refs) > MAX_ROOMS:
        raise BadRequest(f"at most {MAX_ROOMS} rooms per stream")
    return list(dict.fromkeys(refs))


def wants_dms(request: Request) -> bool:
    value = query.first(request.query_params, "dms")
    if value not in DMS_VALUES:
        raise BadRequest("dms must be 1 or 0 (or true or false)")
    return DMS_VALUES[value]


def resume_cursor(request: Request) -> Cursor | None:
    """``Last-Event-ID`` (a reconnecting EventSource's), else ``since``; None: live only.
    Both are checked when both are sent."""
    raw_since = query.first(request.query_params, "since")
    since = sse_wire.parse_cursor(raw_since, "since") if raw_since else None
    last = request.headers.get("last-event-id", "")
    return sse_wire.parse_cursor(last, "Last-Event-ID") if last else since


def room_keys(request: Request, refs: list[str]) -> dict[str, str]:
    """The private-room keys sent, by room as spelled in ``rooms``. Pairs naming no room
    of the stream are ignored, as a key is for a public room; a private room whose
    key is missing is refused by name."""
    values = request.headers.getlist(ROOM_KEY_HEADER)
    if not values:
        return {}
    if len(refs) == 1:
        return {refs[0]: values[0]}
    keys: dict[str, str] = {}
    for item in ",".join(values).split(","):
        room, _, key = item.partition("=")
        if room.strip() in refs and key.strip():
            keys[room.strip()] = unquote(key.strip())
    return keys


async def signed_caller(call: Call) -> Caller:
    """The caller, who must have signed: the precise 401 when they did not."""
    if call.caller.agent is not None:
        return call.caller
    creds = auth.from_headers(call.request.headers)
    if creds is None:
        raise Unauthorized("dms=1 needs a signed request (the X-AICQ-* headers)")
    return call.caller.signed_in(await call.service.authenticate(creds, call.body))


async def events(call: Call) -> Response:
    request, service = call.request, call.service
    refs = room_refs(request)
    dms = wants_dms(request)
    if not refs and not dms:
        raise BadRequest("name at least one room in rooms (ids or public names, comma-separated), or dms=1")
    cursor = resume_cursor(request)
    keys = room_keys(request, refs)
    caller = await signed_caller(call) if dms else call.caller
    rooms: dict[str, Room] = {}
    for ref in refs:
        try:
            room = await service.room(ref, keys.get(ref), caller)
        except AICQError as exc:  # which room, of up to a hundred
            if isinstance(exc, Forbidden) and len(refs) > 1 and ref not in keys:
                exc.message = f"this room is private: X-AICQ-Room-Key needs {ref[:60]}=<key>"
            else:
                exc.message = f"{exc.message}: {ref[:60]}"
            raise
        rooms.setdefault(room.id, room)
    quota: Quota | None = None
    if cursor is not None:  # a resume reads history, and costs what reading it costs
        for _ in rooms:
            quota = await service.admit(caller, "read_room")
        if dms:
            quota = await service.admit(caller, "read_dms")
    headers = {**HEADERS, **(quota.headers() if quota else {})}
    if request.method == "HEAD":
        return Response(status_code=200, media_type="text/event-stream", headers=headers)
    agent_id = caller.agent.id if dms and caller.agent else None
    return EventStreamResponse(list(rooms.values()), agent_id, cursor, headers,
                               slot_key=None if call.caller.whitelisted else call.caller.ip)


class EventStreamResponse(Response):
    """The stream itself, run when Starlette sends the response."""

    def __init__(self, rooms: list[Room], agent_id: str | None, cursor: Cursor | None,
                 headers: dict[str, str], *, slot_key: str | None):
        self.status_code = 200
        self.slot_key = slot_key  # the client's live-session slot (None: never capped)
        self.background = None
        self.rooms, self.agent_id, self.cursor = rooms, agent_id, cursor
        # No Content-Length: uvicorn then sends the body chunked, as HttpConnection expects.
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        connection = httpserver.connection(scope)
        if connection is None:  # served by something other than `aicq serve`: refuse, loudly
            log.error("/events needs aicq.edge.httpserver.AICQHttpProtocol (uvicorn --http)")
            await error_response(Unavailable("event streams are not available on this server"))(
                scope, receive, send)
            return
        stream = Stream(connection, app.state.service, app.state.hub, self.rooms, self.agent_id, self.cursor)
        # A stream is a live session like a WebSocket: it takes one of the client's
        # slots (MAX_SESSIONS_PER_IP), refused with 429 before anything is sent.
        slots: SessionSlots = app.state.session_slots
        if self.slot_key is not None and not slots.acquire(self.slot_key):
            metrics.BLOCKED_REQUESTS.labels(reason="session_cap").inc()
            await error_response(TooManySessions(slots.limit))(scope, receive, send)
            return
        try:
            await self._serve(stream, connection, scope, receive, send)
        finally:
            if self.slot_key is not None:
                slots.release(self.slot_key)

    async def _serve(self, stream: Stream, connection: httpserver.HttpConnection, scope: Scope,
                     receive: Receive, send: Send) -> None:
        try:
            await stream.join()
        except AICQError as exc:  # live delivery unavailable (Redis): nothing sent yet
            await error_response(exc)(scope, receive, send)
            return
        metrics.SSE_STREAMS.inc()
        reason: str | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"retry: %d\n\n" % random.randint(*RETRY_MS),
                        "more_body": True})
            reason = await stream.run()
        finally:
            metrics.SSE_STREAMS.dec()
            await stream.leave()
        await _finish(connection, send, reason)


async def _finish(connection: httpserver.HttpConnection, send: Send, reason: str | None) -> None:
    """End the response: the last chunk when the peer can still take it, else let the
    disconnect reach uvicorn before returning."""
    if reason != httpserver.LOST and connection.open:
        connection.offer(Stream.goodbye(reason), 1 << 20)
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}),
                                   CLOSE_DEADLINE_S)
            return
        except TimeoutError:
            connection.abort()
    try:
        await asyncio.wait_for(connection.ended(), CLOSE_DEADLINE_S)
    except TimeoutError:
        connection.abort()


ROUTES = [Route("/events", endpoint(events, action=None, access=SIGNED_OPTIONAL), methods=["GET"])]
