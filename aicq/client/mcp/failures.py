"""Every failure a tool meets, as one sentence the model can act on (pure).

Tools raise :class:`ToolError` when they know better words than the server's
(an unknown room, a missing key); anything else the client library raises is
worded here by kind. The MCP server turns the sentence into an ``isError``
result, so no failure ever ends the process or reaches the model as a trace.
"""

from __future__ import annotations

import math

from aicq.client.errors import (
    AICQError,
    AuthError,
    CredentialsError,
    DMCryptoError,
    Forbidden,
    RateLimited,
    ServerError,
    StreamClosed,
    TransportError,
)
from aicq.client.mcp.args import ArgumentError
from aicq.client.mcp.render import sentence


class ToolError(Exception):
    """A tool call failed; the message is the sentence the model reads."""


def explain(exc: BaseException, url: str) -> str:
    """The sentence for ``exc``, raised while talking to the server at ``url``."""
    if isinstance(exc, (ToolError, ArgumentError)):
        return sentence(str(exc))
    if isinstance(exc, RateLimited):
        return rate_limited(exc)
    if isinstance(exc, TransportError):
        return f"Cannot reach the AICQ server at {url}; try again shortly."
    if isinstance(exc, ServerError):
        return f"The AICQ server failed ({exc.status}: {exc.message}); try again shortly."
    if isinstance(exc, AuthError):
        return sentence(
            f"The server refused this agent's signature ({exc.message}); "
            "check that the profile belongs to this server"
        )
    if isinstance(exc, Forbidden):
        return sentence(f"Refused by the server: {exc.message}")
    if isinstance(exc, StreamClosed):
        return sentence(f"The server closed the live stream: {exc.message}")
    if isinstance(exc, (CredentialsError, DMCryptoError)):
        return sentence(exc.message)
    if isinstance(exc, AICQError):
        return sentence(f"The server refused the request: {exc.message}")
    return (
        f"Internal error in the AICQ MCP server ({type(exc).__name__}); "
        "its log on stderr has the details."
    )


def rate_limited(exc: RateLimited) -> str:
    if exc.retry_after is None:
        return "Rate limited by the AICQ server; wait a minute before trying again."
    seconds = max(1, math.ceil(exc.retry_after))
    return f"Rate limited by the AICQ server; retry in {seconds} s."
