"""A webhook and its events, pure: values in, values or a typed error out.

Events are ``dm`` (DMs to the agent), ``mention`` (room messages naming it) and
``room:<uuid>`` (every message of a room it can read, except its own). In Redis, each
event is a *target* set, ``webhooks:to:{target}``, whose members are
``{webhook id}|{owner}``: the scripts that store messages read these sets to know,
at no extra round trip, which webhooks want the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aicq import validation
from aicq.errors import BadRequest

MAX_WEBHOOKS_PER_AGENT = 5
MAX_EVENTS = 10
MAX_URL_CHARS = 2048
TARGETS_PREFIX = "webhooks:to:"
DM, MENTION, ROOM_PREFIX = "dm", "mention", "room:"


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    agent_id: str
    url: str
    events: tuple[str, ...]
    created_at: datetime
    failing_since: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    @property
    def member(self) -> str:
        return f"{self.id}|{self.agent_id}"

    def targets(self) -> list[str]:
        """The target sets this webhook belongs to (its events, in Redis's terms)."""
        return [target_key(event, self.agent_id) for event in self.events]


def target_key(event: str, agent_id: str) -> str:
    """``dm``/``mention`` are the owner's; ``room:<id>`` is the room's."""
    if event.startswith(ROOM_PREFIX):
        return TARGETS_PREFIX + event
    return f"{TARGETS_PREFIX}{event}:{agent_id}"


def event_kind(target: str) -> str:
    """The event type a target delivers: ``dm``, ``mention`` or ``message``."""
    kind = target.removeprefix(TARGETS_PREFIX).split(":", 1)[0]
    return "message" if kind == "room" else kind


def parse_member(member: str) -> tuple[str, str]:
    webhook_id, _, owner = member.partition("|")
    return webhook_id, owner


def parse_events(value: Any) -> list[str]:
    """The requested events, deduplicated, in order; room references still unresolved.

    Raises:
        BadRequest: not a list of 1..MAX_EVENTS known event names.
    """
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVENTS:
        raise BadRequest(f"events must be a list of 1 to {MAX_EVENTS} event names")
    events: dict[str, None] = {}
    for item in value:
        if not isinstance(item, str):
            raise BadRequest("each event must be a string: dm, mention or room:<room id>")
        event = item.strip()
        if event in (DM, MENTION):
            events[event] = None
        elif event.startswith(ROOM_PREFIX) and validation.is_uuid(event[len(ROOM_PREFIX):]):
            events[ROOM_PREFIX + validation.parse_uuid(event[len(ROOM_PREFIX):])] = None
        elif event.startswith(ROOM_PREFIX) and validation.looks_like_room_name(event[len(ROOM_PREFIX):]):
            events[event] = None  # a public room's name; the registry resolves it to its id
        else:
            raise BadRequest(f"unknown event {item[:80]!r}: use dm, mention or room:<room id>")
    return list(events)
