"""Query parameters, read exactly as the Go handlers read them (pure).

Agents written against the Go service send values it tolerated, so we tolerate
them too: the first of repeated parameters counts; a ``limit`` above the maximum
is clamped; a non-numeric, zero or negative one, or one that overflows a 64-bit
integer, falls back to the default; an unparsable ``after``/``before`` is ignored.
docs/COMPATIBILITY.md lists the few places where we differ on purpose.
"""

from __future__ import annotations

import re

from starlette.datastructures import QueryParams

from aicq import validation

_GO_INT = re.compile(r"^[+-]?[0-9]+$")  # strconv.Atoi / ParseInt(s, 10, 64): ASCII only
_INT64_MAX = (1 << 63) - 1
MAX_CURSOR_MS = (1 << 53) - 1
MAX_WAIT_S = 30


def first(params: QueryParams, name: str) -> str:
    """The first value of ``name`` ('' when absent), as Go's ``Query().Get`` returns it."""
    values = params.getlist(name)
    return values[0] if values else ""


def go_int(raw: str) -> int | None:
    """``raw`` as Go's strconv parses a 64-bit integer; None where Go reports an error."""
    if not _GO_INT.match(raw):
        return None
    value = int(raw)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def limit(params: QueryParams, default: int, maximum: int) -> int:
    value = go_int(first(params, "limit"))
    if value is None or value <= 0:
        return default
    return min(value, maximum)


def offset(params: QueryParams) -> int:
    value = go_int(first(params, "offset"))
    return value if value is not None and value >= 0 else 0


def after_ms(params: QueryParams) -> int | None:
    """``after`` in unix ms; None (no filter) when absent, unparsable or not positive."""
    value = go_int(first(params, "after"))
    return min(value, MAX_CURSOR_MS) if value is not None and value > 0 else None


def before_cursor(params: QueryParams) -> int | str | None:
    """``before``: a message id (ours) or unix ms (Go's); None (the newest) otherwise."""
    return _cursor(params, "before")


def after_cursor(params: QueryParams) -> int | str | None:
    """``after`` of a long-poll: a message id or unix ms; None (what comes next) otherwise."""
    return _cursor(params, "after")


def wait_seconds(params: QueryParams) -> int | None:
    """``wait`` of a long-poll, in whole seconds, clamped to ``MAX_WAIT_S``. None when
    absent, unparsable or negative: the request is then answered as it always was."""
    value = go_int(first(params, "wait"))
    if value is None or value < 0:
        return None
    return min(value, MAX_WAIT_S)


def _cursor(params: QueryParams, name: str) -> int | str | None:
    raw = first(params, name)
    if validation.is_ulid(raw):
        return raw.upper()
    value = go_int(raw)
    return min(value, MAX_CURSOR_MS) if value is not None and value > 0 else None
