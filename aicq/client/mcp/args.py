"""Tool arguments: one declaration gives the JSON Schema and the check (pure).

A tool's arguments are a tuple of :class:`Arg`. :func:`input_schema` turns them
into the ``inputSchema`` the model sees, and :func:`parse` checks what the model
sent against the same declaration, so the two can never disagree. A refusal is
an :class:`ArgumentError` whose message is one sentence the model can act on;
it names the argument and never repeats its value (a room key stays unseen).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


class ArgumentError(ValueError):
    """A tool was called with arguments it cannot take; the message says which and why."""


@dataclass(frozen=True)
class Arg:
    """One tool argument.

    ``kind`` is ``str``, ``int``, ``float`` (any number), ``bool`` or ``list`` (of
    strings). ``low``/``high`` bound numbers; ``shortest``/``longest`` bound a
    string's length or a list's size.
    """

    name: str
    kind: type
    doc: str
    required: bool = False
    low: float | None = None
    high: float | None = None
    shortest: int | None = None
    longest: int | None = None
    pattern: str | None = None  # a string must match it whole
    pattern_doc: str = ""  # what a match is, for the refusal: "a message id"

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": KINDS[self.kind], "description": self.doc}
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        sizes = ("minItems", "maxItems") if self.kind is list else ("minLength", "maxLength")
        if self.shortest is not None:
            schema[sizes[0]] = self.shortest
        if self.longest is not None:
            schema[sizes[1]] = self.longest
        if self.kind is list:
            schema["items"] = {"type": "string"}
        if self.pattern is not None:
            schema["pattern"] = f"^{self.pattern}$"
        return schema

    def check(self, value: Any) -> Any:
        """``value`` if it fits this argument; raises :class:`ArgumentError` otherwise."""
        name = f"`{self.name}`"
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ArgumentError(f"{name} must be a list of strings.")
            self._check_size(len(value), "items")
            return list(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ArgumentError(f"{name} must be true or false.")
            return value
        if self.kind in (int, float):
            number = _number(value, integer=self.kind is int)
            if number is None:
                kind = "an integer" if self.kind is int else "a number"
                raise ArgumentError(f"{name} must be {kind}.")
            self._check_range(number)
            return number
        if not isinstance(value, str):
            raise ArgumentError(f"{name} must be a string.")
        self._check_size(len(value), "characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ArgumentError(f"{name} must be {self.pattern_doc}.")
        return value

    def _check_range(self, number: float) -> None:
        too_low = self.low is not None and number < self.low
        too_high = self.high is not None and number > self.high
        if not (too_low or too_high):
            return
        if self.low is not None and self.high is not None:
            bounds = f"between {_num(self.low)} and {_num(self.high)}"
        elif self.low is not None:
            bounds = f"at least {_num(self.low)}"
        else:
            bounds = f"at most {_num(self.high)}"
        raise ArgumentError(f"`{self.name}` must be {bounds}.")

    def _check_size(self, size: int, unit: str) -> None:
        if self.shortest and size < self.shortest:
            if self.shortest == 1:
                raise ArgumentError(f"`{self.name}` must not be empty.")
            raise ArgumentError(f"`{self.name}` must have at least {self.shortest} {unit}.")
        if self.longest is not None and size > self.longest:
            raise ArgumentError(f"`{self.name}` must have at most {self.longest} {unit}.")


def _number(value: Any, *, integer: bool) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if integer:
            return int(value) if value.is_integer() else None
    return value


def _num(value: float | None) -> str:
    assert value is not None
    return str(int(value)) if float(value).is_integer() else str(value)


def input_schema(args: Sequence[Arg]) -> dict[str, Any]:
    """The JSON Schema of a tool taking ``args``."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {arg.name: arg.schema() for arg in args},
        "additionalProperties": False,
    }
    required = [arg.name for arg in args if arg.required]
    if required:
        schema["required"] = required
    return schema


def parse(tool: str, args: Sequence[Arg], raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked arguments by name; absent optional ones are ``None``.

    A ``null`` is taken as "not given" (models send it for optional arguments).

    Raises:
        ArgumentError: an unknown or missing argument, or a value that does not fit.
    """
    given = dict(raw or {})
    known = {arg.name: arg for arg in args}
    unknown = sorted(set(given) - set(known))
    if unknown:
        takes = ", ".join(known) or "no arguments"
        raise ArgumentError(f"Unknown argument `{unknown[0]}`: {tool} takes {takes}.")
    out: dict[str, Any] = {}
    for arg in args:
        value = given.get(arg.name)
        if value is None:
            if arg.required:
                raise ArgumentError(f"Missing argument `{arg.name}`: {arg.doc[0].lower()}{arg.doc[1:]}")
            out[arg.name] = None
            continue
        out[arg.name] = arg.check(value)
    return out
