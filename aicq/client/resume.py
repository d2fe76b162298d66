"""What a stream remembers across reconnects (pure: frames in, events out).

Per room: the id the server gave it, the newest message seen (the ``since`` of
the next subscribe), and a bounded set of recently seen ids, so a message
delivered both live and by a replay is yielded once. Per agent: the same for DMs
and for mentions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from aicq.client.models import (
    Deleted,
    DirectMessage,
    Event,
    Gap,
    Joined,
    Left,
    Member,
    Mention,
    Message,
    Roster,
    StatusChanged,
)

SEEN_PER_ROOM = 2048


class RecentIds:
    """A bounded set that forgets the oldest ids first."""

    def __init__(self, capacity: int = SEEN_PER_ROOM) -> None:
        assert capacity > 0
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was already known."""
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


class ResumeState:
    """The rooms a stream follows and how far it has read each of them.

    Args:
        rooms: room ids or public room names, as the caller spells them.
        keys: private room keys, by the same spelling.
        since: a message id per room to resume after, by the same spelling.
        presence: ask every subscription for who is here (a :class:`Roster`, then
            join, leave and status events).
    """

    def __init__(
        self,
        rooms: Iterable[str],
        keys: Mapping[str, str] | None = None,
        since: Mapping[str, str] | None = None,
        presence: bool = False,
    ) -> None:
        self.rooms: list[str] = list(dict.fromkeys(rooms))
        self.presence = presence
        # Room id → agents present, as the stream told its reader: a join of someone
        # already listed (an event the roster already covered) is not news.
        self._present: dict[str, set[str]] = {}
        self._keys = dict(keys or {})
        self.room_ids: dict[str, str] = {}  # as requested -> id
        self.room_names: dict[str, str] = {}  # id -> name
        self._since_by_request = dict(since or {})
        self._cursor: dict[str, tuple[int, str]] = {}  # room id -> (ts, id) newest seen
        # room id -> where the server said a subscription stood (a message id, or unix
        # ms in an empty room): the resume point while no message has been seen.
        self._subscribed_at: dict[str, str] = {}
        self._seen: dict[str, RecentIds] = {}
        self.dm_seen = RecentIds()
        self.dm_floor: tuple[int, str] | None = None  # DMs at or before this predate the stream
        self.mention_seen = RecentIds()
        self.mention_floor: tuple[int, str] | None = None  # mentions predating the stream
        self.mention_newest: tuple[int, str] | None = None  # the newest one yielded

    def add_room(self, room: str, key: str | None = None, since: str | None = None) -> bool:
        """Follow one more room (as the caller spells it); False if it is already followed."""
        if room in self.rooms:
            return False
        self.rooms.append(room)
        if key is not None:
            self._keys[room] = key
        if since is not None:
            self._since_by_request[room] = since
        return True

    def drop_room(self, room: str) -> None:
        """Stop following ``room`` (a subscription the server refused)."""
        if room in self.rooms:
            self.rooms.remove(room)
        self._keys.pop(room, None)
        self._since_by_request.pop(room, None)

    def since(self, room: str) -> str | None:
        """The ``since`` cursor for ``room`` as requested: the newest message id seen."""
        room_id = self.room_ids.get(room, room)
        if room_id in self._cursor:
            return self._cursor[room_id][1]
        return self._subscribed_at.get(room_id) or self._since_by_request.get(room)

    def subscribe_op(self, room: str, ref: str) -> dict[str, Any]:
        """The ``subscribe`` frame for ``room`` (by id once known), resuming where we are."""
        op: dict[str, Any] = {"op": "subscribe", "room": self.room_ids.get(room, room), "ref": ref}
        key = self._keys.get(room)
        if key is not None:
            op["key"] = key
        since = self.since(room)
        if since is not None:
            op["since"] = since
        if self.presence:
            op["presence"] = True
        return op

    def subscribed(self, room: str, ok: Mapping[str, Any], resumed: bool) -> Gap | None:
        """Record the server's ``ok`` to a subscribe; a :class:`Gap` if history expired."""
        info = ok.get("room")
        if isinstance(info, Mapping) and isinstance(info.get("id"), str):
            room_id = info["id"]
            self.room_ids[room] = room_id
            self.room_names[room_id] = str(info.get("name", room_id))
            if room in self._keys:
                self._keys.setdefault(room_id, self._keys[room])
            cursor = ok.get("cursor")
            if isinstance(cursor, str | int) and not isinstance(cursor, bool):
                self._subscribed_at[room_id] = str(cursor)
        if resumed and ok.get("recovered") is False:
            return Gap(self.room_ids.get(room, room))
        return None

    def roster(self, room: str, ok: Mapping[str, Any]) -> Roster | None:
        """Who is in ``room``, from the ``ok`` of a subscribe that asked for presence (or a
        ``presence`` event: the server's hub reconnected, and this replaces what was known)."""
        here = ok.get("presence")
        if not isinstance(here, Mapping):
            return None
        try:
            roster = Roster.from_json(dict(here), self.room_ids.get(room, room))
        except (KeyError, TypeError, ValueError):
            return None
        self._present[roster.room] = {member.id for member in roster.agents}
        return roster

    def accept(self, frame: Mapping[str, Any]) -> Event | None:
        """The event a server frame carries, or None (not an event, or a duplicate)."""
        kind = frame.get("type")
        if kind == "message":
            return self._accept_message(frame)
        if kind == "deleted":
            room, msg_id = frame.get("room"), frame.get("id")
            if isinstance(room, str) and isinstance(msg_id, str):
                return Deleted(room, msg_id)
        elif kind == "dm":
            msg = frame.get("msg")
            if isinstance(msg, Mapping):
                return self.accept_dm(msg, live=True)
        elif kind in ("join", "leave", "status"):
            return self._presence_news(_presence_event(kind, frame))
        elif kind == "presence" and isinstance(frame.get("room"), str):
            return self.roster(frame["room"], {"presence": frame})
        elif kind == "mention":
            msg, room = frame.get("msg"), frame.get("room")
            if isinstance(msg, Mapping) and isinstance(room, str):
                return self.accept_mention(msg, room, live=True)
        return None

    def _presence_news(self, event: Joined | Left | StatusChanged | None) -> Event | None:
        """``event``, unless it tells what the reader knows already."""
        if event is None:
            return None
        present = self._present.setdefault(event.room, set())
        if isinstance(event, Joined):
            if event.member.id in present:
                return None
            present.add(event.member.id)
        elif isinstance(event, Left):
            if event.agent not in present:
                return None
            present.discard(event.agent)
        elif event.agent not in present:
            return None  # a status of someone the reader does not know is here
        return event

    def _accept_message(self, frame: Mapping[str, Any]) -> Message | None:
        room, msg = frame.get("room"), frame.get("msg")
        if not isinstance(room, str) or not isinstance(msg, Mapping):
            return None
        try:
            message = Message.from_json(dict(msg), room)
        except (KeyError, TypeError, ValueError):
            return None  # not a message this protocol version describes
        if not self._seen.setdefault(room, RecentIds()).add(message.id):
            return None
        position = (message.ts, message.id)
        if room not in self._cursor or position > self._cursor[room]:
            self._cursor[room] = position
        return message

    def accept_dm(self, msg: Mapping[str, Any], *, live: bool) -> DirectMessage | None:
        """A DM not seen yet; a catch-up (not ``live``) one must also postdate the stream."""
        try:
            dm = DirectMessage.from_json(dict(msg))
        except (KeyError, TypeError, ValueError):
            return None
        if not live and self.dm_floor is not None and (dm.ts, dm.id) <= self.dm_floor:
            return None
        if not self.dm_seen.add(dm.id):
            return None
        return dm

    def dm_baseline(self, inbox: Iterable[Mapping[str, Any]]) -> None:
        """Mark the DMs already in the inbox when the stream starts as old news."""
        for msg in inbox:
            position = (int(msg["ts"]), str(msg["id"]))
            self.dm_seen.add(position[1])
            if self.dm_floor is None or position > self.dm_floor:
                self.dm_floor = position
        if self.dm_floor is None:
            self.dm_floor = (0, "")

    def accept_mention(
        self, msg: Mapping[str, Any], room: str | None, *, live: bool
    ) -> Mention | None:
        """A mention not seen yet; a catch-up (not ``live``) one must also postdate the stream."""
        try:
            mention = Mention.from_json(dict(msg), room)
        except (KeyError, TypeError, ValueError):
            return None
        position = (mention.ts, mention.id)
        if not live and self.mention_floor is not None and position <= self.mention_floor:
            return None
        if not self.mention_seen.add(mention.id):
            return None
        if self.mention_newest is None or position > self.mention_newest:
            self.mention_newest = position
        return mention

    def mention_baseline(self, newest: Mapping[str, Any] | None) -> None:
        """Mark the newest mention when the stream starts (and every older one) as old news."""
        self.mention_floor = (int(newest["ts"]), str(newest["id"])) if newest else (0, "")
        self.mention_seen.add(self.mention_floor[1])

    def mention_since(self) -> int:
        """The ``after`` (unix ms) of a catch-up: a millisecond before the newest mention
        seen, since mentions from several rooms need not arrive in id order within one
        millisecond; the ids seen weed out the repeats."""
        newest = self.mention_newest or self.mention_floor or (0, "")
        return max(0, newest[0] - 1)


def _presence_event(kind: str, frame: Mapping[str, Any]) -> Joined | Left | StatusChanged | None:
    room, agent = frame.get("room"), frame.get("agent")
    if not isinstance(room, str) or not isinstance(agent, Mapping) or not isinstance(agent.get("id"), str):
        return None
    try:
        if kind == "join":
            return Joined(room, Member.from_json(dict(agent)))
        if kind == "leave":
            return Left(room, agent["id"])
        return StatusChanged(room, agent["id"], str(agent.get("status") or "online"), agent.get("text"))
    except (KeyError, TypeError, ValueError):
        return None  # not an event this protocol version describes
