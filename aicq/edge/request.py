"""The request edge every transport shares: who is calling, their body, JSON answers.

REST handlers, the WebSocket session, SSE and long-poll all start here, so the
client's address, the body cap and the shape of an error are decided once.
"""

from __future__ import annotations

import ipaddress
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
    """Who the client is, for limits, blocks and logs.

    The address is the last hop of the trusted proxy's header (``CLIENT_IP_HEADER``:
    in a forwarding chain that is the one the proxy itself appended; whatever a client
    wrote further left is its own say-so), or the TCP peer when no header is configured
    or its value is not an address. IPv4 clients are their address; IPv6 clients are
    their ``IPV6_PREFIX`` network (a /64 by default), since one host can rotate through
    a whole /64 and must not get a fresh budget with each address.
    """
    settings = connection.app.state.settings
    address = None
    if settings.client_ip_header:
        address = parse_address(last_hop(connection.headers.get(settings.client_ip_header, "")))
    if address is None and connection.client is not None:
        address = parse_address(connection.client.host)
    if address is None:
        return "unknown"
    return limit_key(address, settings.ipv6_prefix)


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ADDRESS_CHARS = 64  # the longest IPv6 spelling with brackets, zone and port fits


def last_hop(header: str) -> str:
    """The rightmost entry of a comma-separated forwarding chain (``X-Forwarded-For``)."""
    return header.rpartition(",")[2].strip()


def parse_address(text: str) -> IPAddress | None:
    """An IP address as proxies write it, normalised; None for anything else.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443`` and a
    zone (``fe80::1%eth0``, dropped); an IPv4-mapped IPv6 address is its IPv4 address.
    """
    text = text.strip()
    if not text or len(text) > MAX_ADDRESS_CHARS:
        return None
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        text, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or (port[:1] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:  # IPv4:port
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def limit_key(address: IPAddress, ipv6_prefix: int) -> str:
    """What limits count per: an IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits."""
    if address.version == 4 or ipv6_prefix == 128:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{ipv6_prefix}", strict=False))


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
