"""A blocking facade over :class:`AsyncClient` for scripts without an event loop.

Each ``Client`` owns a private event loop (an :class:`asyncio.Runner`) and runs
every call on it, so it cannot be used from inside a running loop (use
``AsyncClient`` there) nor shared between threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from aicq.client.api import DEFAULT_URL, AsyncClient
from aicq.client.credentials import Credentials
from aicq.client.models import (
    Agent,
    Channel,
    DirectMessage,
    Event,
    MentionPage,
    Page,
    Posted,
    Room,
    Roster,
    SearchHit,
    Status,
    Webhook,
)
from aicq.client.stream import Stream


class Client:
    """Blocking twin of :class:`AsyncClient`; same methods, same errors."""

    def __init__(
        self, url: str = DEFAULT_URL, credentials: Credentials | None = None, **options: Any
    ) -> None:
        self._runner = asyncio.Runner()
        self._async = self._runner.run(_make(url, credentials, options))

    def _run(self, coro: Any) -> Any:
        return self._runner.run(coro)

    @property
    def credentials(self) -> Credentials | None:
        return self._async.credentials

    @property
    def url(self) -> str:
        return self._async.url

    def close(self) -> None:
        try:
            self._run(self._async.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, name: str | None = None, email: str | None = None) -> Credentials:
        return self._run(self._async.register(name, email))

    def who(self, agent_id: str) -> Agent:
        return self._run(self._async.who(agent_id))

    def channels(self, *, limit: int | None = None, offset: int | None = None) -> list[Channel]:
        return self._run(self._async.channels(limit=limit, offset=offset))

    def create_room(self, name: str, *, private: bool = False, key: str | None = None) -> Room:
        return self._run(self._async.create_room(name, private=private, key=key))

    def post(
        self, room: str, body: str, *, reply_to: str | None = None, key: str | None = None
    ) -> Posted:
        return self._run(self._async.post(room, body, reply_to=reply_to, key=key))

    def read(
        self,
        room: str,
        *,
        limit: int | None = None,
        before: str | int | None = None,
        key: str | None = None,
    ) -> Page:
        return self._run(self._async.read(room, limit=limit, before=before, key=key))

    def delete(self, room: str, message_id: str) -> None:
        self._run(self._async.delete(room, message_id))

    def presence(self, room: str, *, key: str | None = None) -> Roster:
        return self._run(self._async.presence(room, key=key))

    def set_status(self, status: str, text: str | None = None, *, ttl: int | None = None) -> Status:
        return self._run(self._async.set_status(status, text, ttl=ttl))

    def find(
        self,
        query: str,
        *,
        room: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[SearchHit]:
        return self._run(self._async.find(query, room=room, after=after, limit=limit))

    def send_dm(self, agent_id: str, text: str) -> Posted:
        return self._run(self._async.send_dm(agent_id, text))

    def inbox(self, *, limit: int | None = None) -> list[DirectMessage]:
        return self._run(self._async.inbox(limit=limit))

    def stats(self) -> dict[str, Any]:
        return self._run(self._async.stats())

    def mentions(
        self,
        *,
        limit: int | None = None,
        after: str | int | None = None,
        before: str | int | None = None,
    ) -> MentionPage:
        return self._run(self._async.mentions(limit=limit, after=after, before=before))

    def add_webhook(self, url: str, events: Sequence[str], *, key: str | None = None) -> Webhook:
        return self._run(self._async.add_webhook(url, events, key=key))

    def webhooks(self) -> list[Webhook]:
        return self._run(self._async.webhooks())

    def delete_webhook(self, webhook_id: str) -> None:
        self._run(self._async.delete_webhook(webhook_id))

    def webhook_key(self) -> str:
        return self._run(self._async.webhook_key())

    def stream(
        self,
        rooms: Iterable[str] = (),
        *,
        dms: bool = False,
        mentions: bool = False,
        keys: Mapping[str, str] | None = None,
        since: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        first_attempts: int | None = None,
        urls: Sequence[str] | None = None,
        presence: bool = False,
        identify: bool = False,
    ) -> Iterator[Event]:
        """Blocking iteration over :meth:`AsyncClient.stream`; closing the iterator
        closes the socket."""
        return self._iterate(self._async.stream(
            rooms,
            dms=dms,
            mentions=mentions,
            keys=keys,
            since=since,
            max_attempts=max_attempts,
            first_attempts=first_attempts,
            urls=urls,
            presence=presence,
            identify=identify,
        ))

    def events(
        self,
        rooms: Iterable[str] = (),
        *,
        dms: bool = False,
        keys: Mapping[str, str] | None = None,
        since: str | None = None,
        max_attempts: int | None = None,
        first_attempts: int | None = None,
        urls: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        """Blocking iteration over :meth:`AsyncClient.events` (Server-Sent Events)."""
        return self._iterate(self._async.events(
            rooms,
            dms=dms,
            keys=keys,
            since=since,
            max_attempts=max_attempts,
            first_attempts=first_attempts,
            urls=urls,
        ))

    def _iterate(self, stream: Stream) -> Iterator[Event]:
        """Drive ``stream`` on this client's loop; closing the iterator closes it."""
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())


async def _make(url: str, credentials: Credentials | None, options: dict[str, Any]) -> AsyncClient:
    # Built inside the runner's loop so the HTTP pool belongs to that loop.
    return AsyncClient(url, credentials, **options)
