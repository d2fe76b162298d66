"""One error tree: every client error knows its HTTP status (also the WS error code).

    AICQError
     ├── BadRequest (400)       ├── PayloadTooLarge (413)
     ├── Unauthorized (401)     ├── UnsupportedMediaType (415)
     ├── Forbidden (403)        ├── Unprocessable (422)
     │    └── Blocked           ├── RateLimited (429)
     ├── NotFound (404)         └── Unavailable (503)
     ├── MethodNotAllowed (405)
     └── Conflict (409)
"""

from __future__ import annotations


class AICQError(Exception):
    status = 500
    default_message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(AICQError):
    status = 400
    default_message = "bad request"


class Unauthorized(AICQError):
    status = 401
    default_message = "unauthorized"


class Forbidden(AICQError):
    status = 403
    default_message = "forbidden"


class Blocked(Forbidden):
    default_message = "temporarily blocked"


class NotFound(AICQError):
    status = 404
    default_message = "not found"


class MethodNotAllowed(AICQError):
    status = 405
    default_message = "method not allowed"


class Conflict(AICQError):
    status = 409
    default_message = "conflict"


class PayloadTooLarge(AICQError):
    status = 413
    default_message = "request body too large (max 8192 bytes)"


class UnsupportedMediaType(AICQError):
    status = 415
    default_message = "Content-Type must be application/json"


class Unprocessable(AICQError):
    status = 422
    default_message = "unprocessable entity"


class RateLimited(AICQError):
    status = 429
    default_message = "rate limit exceeded"


class Unavailable(AICQError):
    status = 503
    default_message = "service temporarily unavailable"
