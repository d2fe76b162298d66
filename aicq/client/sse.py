"""Live events over Server-Sent Events (``GET /events``), for where no WebSocket goes.

The same :class:`~aicq.client.stream.Stream` (events, reconnection, instance
rotation), over plain HTTP: one streaming ``GET`` per connection, resumed with the
``Last-Event-ID`` the server gave last, exactly as a browser's ``EventSource``
does. The server's cursor covers the DMs too, so no inbox catch-up is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

from aicq.client.api import error_from
from aicq.client.auth import signed_headers
from aicq.client.errors import TransportError
from aicq.client.models import DirectMessage, Event, Room
from aicq.client.stream import Stream, _Retry

if TYPE_CHECKING:
    from aicq.client.api import AsyncClient

ROOM_KEY_HEADER = "X-AICQ-Room-Key"
# The server sends a comment every 15 s: three missed in a row is a dead connection.
READ_TIMEOUT_S = 45.0


@dataclass(frozen=True, slots=True)
class ServerEvent:
    event: str  # the event type ("message" when the server named none)
    data: str
    last_id: str | None  # the stream's cursor after this event (what Last-Event-ID resends)


class EventParser:
    """``text/event-stream`` lines in, events out (the WHATWG parsing rules)."""

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        """One line, without its line break; the event it completes, if any."""
        if not line:
            event, data, self._event, self._data = self._event or "message", self._data, "", []
            return ServerEvent(event, "\n".join(data), self.last_id) if data else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value or None
        return None


def room_key_header(rooms: Sequence[str], keys: Mapping[str, str]) -> str | None:
    """``X-AICQ-Room-Key`` for a stream of ``rooms``: the key itself for one room,
    else ``<room>=<percent-encoded key>`` pairs, comma-separated."""
    wanted = [(room, keys[room]) for room in rooms if room in keys]
    if not wanted:
        return None
    if len(rooms) == 1:
        return wanted[0][1]
    return ", ".join(f"{room}={quote(key, safe='')}" for room, key in wanted)


class EventStream(Stream):
    """:class:`Stream`'s events over ``GET /events`` instead of ``/ws``.

    Args:
        since: resume after this cursor: a message id, unix ms, or an ``id`` this
            kind of stream gave before (``cursor``).
        read_timeout: seconds of silence after which the connection counts as lost.
        The others: as :class:`Stream`.
    """

    def __init__(
        self,
        client: AsyncClient,
        rooms: Iterable[str] = (),
        *,
        dms: bool = False,
        keys: Mapping[str, str] | None = None,
        since: str | None = None,
        max_attempts: int | None = None,
        first_attempts: int | None = None,
        ready_timeout: float = 10.0,
        read_timeout: float = READ_TIMEOUT_S,
        backoff: float = 0.25,
        max_backoff: float = 15.0,
        urls: Sequence[str] | None = None,
    ) -> None:
        super().__init__(client, rooms, dms=dms, keys=keys, max_attempts=max_attempts,
                         first_attempts=first_attempts, ready_timeout=ready_timeout, backoff=backoff,
                         max_backoff=max_backoff, urls=urls)
        self.cursor = since  # the server's cursor: sent back as Last-Event-ID
        self.read_timeout = read_timeout
        self._keys = dict(keys or {})

    async def follow(self, room: str, *, key: str | None = None, since: str | None = None) -> Room:
        """Not for SSE: a stream's rooms are in its URL, fixed when it opens."""
        raise NotImplementedError("an SSE stream follows the rooms it was opened with; open another for more")

    def _endpoint(self, base_url: str) -> str:
        return base_url.rstrip("/") + "/events"

    async def _prepare(self) -> None:
        if self._dms:
            self._client.require_credentials().require_id()

    async def _connection(self) -> AsyncIterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if self.cursor is not None:
            headers["Last-Event-ID"] = self.cursor
        key = room_key_header(self.state.rooms, self._keys)
        if key is not None:
            headers[ROOM_KEY_HEADER] = key
        if self._dms:
            headers.update(signed_headers(self._client.require_credentials(), b""))
        params: dict[str, Any] = {"rooms": ",".join(self.state.rooms)} if self.state.rooms else {}
        if self._dms:
            params["dms"] = "1"
        timeout = httpx.Timeout(self.ready_timeout, read=self.read_timeout)
        resumed = self.cursor is not None
        try:
            async with self._client.open_stream(self._rest("/events"), params=params, headers=headers,
                                                timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise error_from(response)
                parser = EventParser(self.cursor)
                async for line in response.aiter_lines():
                    found = parser.feed(line)
                    self.cursor = parser.last_id
                    if found is None:
                        continue
                    if found.event == "ready":
                        for gap in self._on_ready(orjson.loads(found.data), resumed):
                            yield gap
                        continue
                    event = self.state.accept(orjson.loads(found.data))
                    if isinstance(event, DirectMessage):
                        event = self._client.decrypt(event)
                    if event is not None:
                        yield event
        except httpx.TransportError as exc:
            raise TransportError(f"event stream from {self.url} failed: {exc or type(exc).__name__}") from exc
        except orjson.JSONDecodeError as exc:
            raise _Retry(f"unreadable event: {exc}") from exc

    def _on_ready(self, ready: dict[str, Any], resumed: bool) -> list[Event]:
        """Learn the rooms' ids and names; a Gap per room when history expired."""
        self.hello = ready
        gaps: list[Event] = []
        for room in self.state.rooms:
            info = next((r for r in ready.get("rooms", []) if room in (r.get("id"), r.get("name"))), None)
            if info is not None:
                gap = self.state.subscribed(room, {"room": info, "recovered": ready.get("recovered")}, resumed)
                if gap is not None:
                    gaps.append(gap)
        self._mark_ready()
        return gaps

