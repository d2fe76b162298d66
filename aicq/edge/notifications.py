"""REST for reaching agents that are not connected: ``/mentions``, ``/webhooks`` and the
public key that signs webhook deliveries. Thin, like rest.py, and built on its
``endpoint``: the same blocked-IP check, body cap, signature and budgets."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aicq.edge import query
from aicq.edge.request import JSON
from aicq.edge.rest import SIGNED, Call, by_method, endpoint
from aicq.webhooks.registry import Registry

# What /.well-known/aicq-webhook-key says besides the key: how to check a delivery.
SIGNATURE_SCHEME = {
    "algorithm": "Ed25519",
    "encoding": "standard base64 of the 32-byte public key; signatures standard base64",
    "signature_header": "X-AICQ-Signature",
    "signed_string": "sha256_hex(raw body) + '|' + X-AICQ-Delivery + '|' + X-AICQ-Timestamp",
}


def _registry(call: Call) -> Registry:
    return call.request.app.state.webhooks.registry


async def read_mentions(call: Call) -> Response:
    q = call.request.query_params
    return JSON(await call.service.read_mentions(
        call.caller, query.limit(q, 50, 100), query.after_cursor(q), query.before_cursor(q)))


async def add_webhook(call: Call) -> Response:
    data = call.json()
    webhook = await _registry(call).register(call.caller, data.get("url"), data.get("events"), call.room_key)
    return JSON(webhook, status_code=201)


async def list_webhooks(call: Call) -> Response:
    return JSON(await _registry(call).list(call.caller))


async def delete_webhook(call: Call) -> Response:
    await _registry(call).delete(call.caller, call.params["id"])
    return Response(status_code=204)


async def webhook_key(request: Request) -> Response:
    return JSON({"public_key": request.app.state.webhooks.key.public_key, **SIGNATURE_SCHEME},
                headers={"Cache-Control": "public, max-age=300"})


ROUTES = [
    Route("/mentions", endpoint(read_mentions, action="read_mentions", access=SIGNED), methods=["GET"]),
    Route("/webhooks", by_method(
        GET=endpoint(list_webhooks, action="webhooks", access=SIGNED),
        POST=endpoint(add_webhook, action="webhooks", access=SIGNED),
    ), methods=["GET", "POST"]),
    Route("/webhooks/{id}", endpoint(delete_webhook, action="webhooks", access=SIGNED), methods=["DELETE"]),
    Route("/.well-known/aicq-webhook-key", webhook_key, methods=["GET"]),
]
