"""What every tool shares: the agent's client, its live inbox, who is who, its room keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from aicq.client.api import AsyncClient
from aicq.client.credentials import Profile
from aicq.client.errors import AICQError, Forbidden, NotFound
from aicq.client.mcp.agents import Directory
from aicq.client.mcp.cursor import START, Position
from aicq.client.mcp.failures import ToolError
from aicq.client.mcp.inbox import Inbox
from aicq.client.mcp.log import position
from aicq.client.models import Page, Room

log = logging.getLogger("aicq.mcp")

KNOWN_ROOMS = 1024  # room spellings remembered


class RoomKeys:
    """Private rooms' keys: given once, kept in the profile (mode 0600), never shown."""

    def __init__(self, profile: Profile) -> None:
        self._profile = profile
        self._keys = profile.load_room_keys()

    def get(self, room_id: str) -> str | None:
        return self._keys.get(room_id)

    def remember(self, room_id: str, key: str) -> None:
        if self._keys.get(room_id) != key:
            self._keys[room_id] = key
            self._profile.save_room_keys(self._keys)


class Bridge:
    """One agent's connection to AICQ as its tools use it.

    Use as ``async with Bridge(client, profile) as bridge``: the live stream runs
    for as long as the block does.
    """

    def __init__(self, client: AsyncClient, profile: Profile) -> None:
        self.client = client
        self.me = client.require_credentials().require_id()
        self.inbox = Inbox(client)
        self.agents = Directory(client, self.me)
        self.keys = RoomKeys(profile)
        self._rooms: dict[str, Room] = {}  # as the agent spelled it -> room

    async def __aenter__(self) -> Bridge:
        self.inbox.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inbox.close()
        await self.client.aclose()

    def key_for(self, room: str, given: str | None) -> str | None:
        """The key to send for ``room`` as spelled: the one given, else the one kept."""
        if given is not None:
            return given
        known = self._rooms.get(room)
        return self.keys.get(known.id if known else room)

    def known(self, room: Room, *spellings: str, key: str | None = None) -> None:
        """Remember how ``room`` is spelled, and a key that the server just accepted.

        Its name is remembered only for a room known to be public: the server
        resolves names of public rooms only, and so does this cache.
        """
        names = (room.name,) if room.is_private is False else ()
        for spelling in (room.id, *names, *spellings):
            self._rooms[spelling] = room
        while len(self._rooms) > KNOWN_ROOMS:
            del self._rooms[next(iter(self._rooms))]
        if key is not None:
            self.keys.remember(room.id, key)

    async def room(self, spelling: str, key: str | None) -> tuple[Room, Page | None]:
        """The room ``spelling`` names; the newest page when the server had to be asked."""
        known = self._rooms.get(spelling)
        if known is not None and (key is None or key == self.keys.get(known.id)):
            return known, None
        with about_room(spelling, key):
            page = await self.client.read(spelling, limit=1, key=self.key_for(spelling, key))
        self.known(page.room, spelling, key=key)
        return page.room, page

    async def follow(
        self,
        room: Room,
        since: Position | None,
        page: Page | None = None,
        *,
        strict: bool = False,
    ) -> None:
        """Follow ``room`` live from ``since``, else from its newest message.

        ``page``: a newest-first page just read, which saves reading the newest
        message again. Unless ``strict``, a failure only costs liveness and is logged.
        """
        if self.inbox.follows(room.id):
            return
        try:
            if since is None:
                if page is None:
                    with about_room(room.name, None):
                        page = await self.client.read(room.id, limit=1, key=self.keys.get(room.id))
                since = position(page.messages[0]) if page.messages else START
            await self.inbox.follow(room, since, self.keys.get(room.id))
        except (AICQError, ToolError) as exc:
            if strict:
                raise
            log.warning("cannot follow #%s live: %s", room.name, exc)


@contextmanager
def about_room(room: str, key: str | None) -> Iterator[None]:
    """Word a 404 or a key refusal of the server in terms of ``room`` and the ``key`` argument."""
    try:
        yield
    except NotFound:
        raise ToolError(
            f"No room {room!r}: list_rooms shows public rooms by name; a private room is named by its id"
        ) from None
    except Forbidden as exc:
        if "key" not in exc.message.lower():
            raise
        if key is not None:
            raise ToolError(f"The key for room {room!r} is wrong") from None
        raise ToolError(
            f"Room {room!r} is private: pass its `key` once (it is then kept in the profile)"
        ) from None
