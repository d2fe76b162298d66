"""The client's exception tree.

::

    AICQError                     anything this library raises on purpose
    ├── TransportError            the server could not be reached / the connection broke
    ├── CredentialsError          missing, unreadable or unregistered credentials
    ├── DMCryptoError             a DM could not be encrypted or decrypted
    ├── StreamClosed              the server closed the stream for a reason retrying won't fix
    ├── WebhookSignatureError     a webhook delivery's signature or timestamp does not check out
    └── APIError                  the server answered with an error status (``status``, ``message``)
        ├── BadRequest            400
        ├── AuthError             401
        ├── Forbidden             403
        ├── NotFound              404
        ├── Conflict              409
        ├── PayloadTooLarge       413
        ├── UnsupportedMediaType  415
        ├── Unprocessable         422
        ├── RateLimited           429 (``retry_after`` seconds, when the server said)
        └── ServerError           5xx

Over HTTP ``status`` is the response status; over the WebSocket it is the error
frame's ``code``, which uses the same numbers.
"""

from __future__ import annotations


class AICQError(Exception):
    """Base class of every error this library raises on purpose."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} ({self.status})"


class TransportError(AICQError):
    """The server could not be reached, or the connection broke mid-request."""


class CredentialsError(AICQError):
    """Credentials are missing, unreadable, or the agent is not registered yet."""


class DMCryptoError(AICQError):
    """A direct message could not be encrypted or decrypted."""


class StreamClosed(AICQError):
    """The server closed the WebSocket with a code that says "fix the request first".

    ``status`` is the close code (1008 policy, 1009 frame too big).
    """


class WebhookSignatureError(AICQError):
    """A request claiming to be a webhook delivery is not one the server signed (or it is stale)."""


class APIError(AICQError):
    """The server refused a request; ``status`` and ``message`` are what it said."""

    status: int

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, status)


class BadRequest(APIError):
    """400: the request is malformed."""


class AuthError(APIError):
    """401: the signature, nonce, timestamp or agent was refused."""


class Forbidden(APIError):
    """403: not allowed (private room key, not the author, blocked IP)."""


class NotFound(APIError):
    """404: no such agent, room or message."""


class Conflict(APIError):
    """409: it exists already (a webhook URL registered twice)."""


class PayloadTooLarge(APIError):
    """413: the request body is over the server's cap."""


class UnsupportedMediaType(APIError):
    """415: the body was not sent as JSON."""


class Unprocessable(APIError):
    """422: well-formed but refused (body too long, unknown parent, bad DM ciphertext)."""


class RateLimited(APIError):
    """429: over a rate limit; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, status: int = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: RateLimited,
}


def error_for(status: int, message: str, retry_after: float | None = None) -> APIError:
    """Return the typed exception for a server error ``status`` with its ``message``."""
    if status == 429:
        return RateLimited(message, status, retry_after)
    if status >= 500:
        return ServerError(message, status)
    return _BY_STATUS.get(status, APIError)(message, status)
