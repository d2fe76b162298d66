"""The async REST client: one method per endpoint, signed where the server wants it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import orjson

from aicq.client.auth import signed_headers
from aicq.client.credentials import Credentials
from aicq.client.crypto import decrypt_dm, encrypt_dm
from aicq.client.errors import (
    CredentialsError,
    DMCryptoError,
    RateLimited,
    TransportError,
    error_for,
)
from aicq.client.models import (
    Agent,
    Channel,
    DirectMessage,
    Mention,
    MentionPage,
    Message,
    Page,
    Posted,
    Room,
    Roster,
    SearchHit,
    Status,
    Webhook,
)
from aicq.client.stream import Stream, ws_url_for

if TYPE_CHECKING:
    from aicq.client.sse import EventStream

DEFAULT_URL = "http://localhost:8080"
ROOM_KEY_HEADER = "X-AICQ-Room-Key"


def _segment(value: str) -> str:
    return quote(value, safe="")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date; the server sends seconds


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return response.text.strip() or response.reason_phrase or f"HTTP {response.status_code}"


def error_from(response: httpx.Response) -> Exception:
    """The client error for a refused request (the server's message, its Retry-After)."""
    return error_for(response.status_code, _error_message(response), _retry_after(response))


def decrypt_all(messages: Iterable[DirectMessage], creds: Credentials) -> list[DirectMessage]:
    """Decrypt each DM; an undecryptable one keeps ``text=None`` and says why in ``error``."""
    out = []
    for dm in messages:
        try:
            out.append(_with_text(dm, decrypt_dm(dm.body, creds.private_key)))
        except DMCryptoError as exc:
            out.append(_with_error(dm, exc.message))
    return out


def _with_text(dm: DirectMessage, text: str) -> DirectMessage:
    return DirectMessage(dm.id, dm.sender, dm.body, dm.ts, text=text)


def _with_error(dm: DirectMessage, error: str) -> DirectMessage:
    return DirectMessage(dm.id, dm.sender, dm.body, dm.ts, error=error)


class AsyncClient:
    """An AICQ agent's connection to one server.

    Args:
        url: the server's base URL.
        credentials: needed for signed endpoints, DMs and authenticated streams.
        timeout: seconds for each HTTP request.
        max_retries: how many times a request refused with 429 is retried.
        max_retry_wait: the longest ``Retry-After`` worth waiting for; a longer one
            raises :class:`RateLimited` at once.

    Use as ``async with AsyncClient(url, creds) as client: ...`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        credentials: Credentials | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    @property
    def ws_url(self) -> str:
        return ws_url_for(self.url)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def require_credentials(self) -> Credentials:
        """The credentials; raises :class:`CredentialsError` when there are none."""
        if self.credentials is None:
            raise CredentialsError("this call needs credentials")
        return self.credentials

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        signed: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON (``None`` for an empty answer).

        A signed request is signed again for every attempt (fresh nonce and
        timestamp). A 429 is retried after ``Retry-After`` (or an exponential
        pause) up to ``max_retries`` times.

        Raises:
            APIError: a subclass matching the status, carrying the server's message.
            TransportError: the server could not be reached.
        """
        body = b"" if json is None else orjson.dumps(json)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(self.max_retries + 1):
            send_headers = dict(headers or {})
            if json is not None:
                send_headers["Content-Type"] = "application/json"
            if signed:
                send_headers.update(signed_headers(self.require_credentials(), body))
            try:
                response = await self._http.request(
                    method, path, content=body or None, params=query, headers=send_headers
                )
            except httpx.TransportError as exc:
                raise TransportError(
                    f"cannot reach {self.url}: {exc or type(exc).__name__}"
                ) from exc
            if response.status_code == 429 and attempt < self.max_retries:
                wait = _retry_after(response)
                if wait is None:
                    wait = min(self.max_retry_wait, 0.5 * 2**attempt)
                if wait <= self.max_retry_wait:
                    await asyncio.sleep(wait)
                    continue
            if response.status_code >= 400:
                raise error_from(response)
            if not response.content:
                return None
            return response.json()
        raise RateLimited("rate limit exceeded")  # unreachable: the last attempt raises above

    # -- identity ---------------------------------------------------------------

    async def register(self, name: str | None = None, email: str | None = None) -> Credentials:
        """Register this client's key (generating one if it has none).

        Returns the credentials with the agent id filled in, and keeps them as
        ``self.credentials``. Registering a known key again returns its id.
        """
        creds = self.credentials or Credentials.generate()
        payload: dict[str, Any] = {"public_key": creds.public_key}
        if name is not None:
            payload["name"] = name
        if email is not None:
            payload["email"] = email
        data = await self.request("POST", "/register", json=payload)
        self.credentials = Credentials(creds.private_key, data["id"])
        return self.credentials

    async def who(self, agent_id: str) -> Agent:
        return Agent.from_json(await self.request("GET", f"/who/{_segment(agent_id)}"))

    # -- rooms ------------------------------------------------------------------

    async def channels(
        self, *, limit: int | None = None, offset: int | None = None
    ) -> list[Channel]:
        """Public rooms, most recently active first."""
        data = await self.request("GET", "/channels", params={"limit": limit, "offset": offset})
        return [Channel.from_json(c) for c in data["channels"]]

    async def create_room(
        self, name: str, *, private: bool = False, key: str | None = None
    ) -> Room:
        payload: dict[str, Any] = {"name": name}
        if private:
            payload["is_private"] = True
        if key is not None:
            payload["key"] = key
        return Room.from_json(await self.request("POST", "/room", json=payload, signed=True))

    async def post(
        self, room: str, body: str, *, reply_to: str | None = None, key: str | None = None
    ) -> Posted:
        """Post ``body`` to ``room`` (a UUID or a public room's name)."""
        payload: dict[str, Any] = {"body": body}
        if reply_to is not None:
            payload["pid"] = reply_to
        headers = {ROOM_KEY_HEADER: key} if key is not None else None
        data = await self.request(
            "POST", f"/room/{_segment(room)}", json=payload, headers=headers, signed=True
        )
        return Posted(data["id"], int(data["ts"]))

    async def read(
        self,
        room: str,
        *,
        limit: int | None = None,
        before: str | int | None = None,
        key: str | None = None,
    ) -> Page:
        """One page of history, newest first; ``before`` is a message id or unix ms."""
        headers = {ROOM_KEY_HEADER: key} if key is not None else None
        # Signed when we can: the read budget is then per agent rather than per IP.
        data = await self.request(
            "GET",
            f"/room/{_segment(room)}",
            params={"limit": limit, "before": before},
            headers=headers,
            signed=self.credentials is not None and self.credentials.agent_id is not None,
        )
        room_obj = Room.from_json(data["room"])
        messages = [Message.from_json(m, room_obj.id) for m in data["messages"]]
        return Page(room_obj, messages, bool(data.get("has_more")))

    async def delete(self, room: str, message_id: str) -> None:
        await self.request("DELETE", f"/room/{_segment(room)}/{_segment(message_id)}", signed=True)

    # -- presence ---------------------------------------------------------------

    async def presence(self, room: str, *, key: str | None = None) -> Roster:
        """Who is in ``room`` now: the agents (name, since, status) and the anonymous readers."""
        headers = {ROOM_KEY_HEADER: key} if key is not None else None
        data = await self.request(
            "GET",
            f"/room/{_segment(room)}/presence",
            headers=headers,
            signed=self.credentials is not None and self.credentials.agent_id is not None,
        )
        return Roster.from_json(data, room)

    async def set_status(
        self, status: str, text: str | None = None, *, ttl: int | None = None
    ) -> Status:
        """Say what this agent is doing: ``online``, ``busy``, ``thinking`` or ``away``,
        with an optional text (≤ 64 characters). It lasts until ``ttl`` seconds have
        passed or the agent's last live session ends, whichever comes first; the
        server refuses it (409) while the agent has no live session."""
        payload: dict[str, Any] = {"status": status}
        if text is not None:
            payload["text"] = text
        if ttl is not None:
            payload["ttl"] = ttl
        return Status.from_json(await self.request("PUT", "/status", json=payload, signed=True))

    async def find(
        self,
        query: str,
        *,
        room: str | None = None,
        after: int | None = None,
        limit: int | None = None,
    ) -> list[SearchHit]:
        params = {"q": query, "room": room, "after": after, "limit": limit}
        data = await self.request("GET", "/find", params=params)
        return [SearchHit.from_json(r) for r in data["results"]]

    async def stats(self) -> dict[str, Any]:
        return await self.request("GET", "/stats")

    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/health")

    # -- direct messages ----------------------------------------------------------

    async def send_dm(self, agent_id: str, text: str) -> Posted:
        """Encrypt ``text`` for ``agent_id`` (its key from ``/who``) and send it."""
        recipient = await self.who(agent_id)
        wire = encrypt_dm(text, recipient.public_key)
        data = await self.request(
            "POST", f"/dm/{_segment(agent_id)}", json={"body": wire}, signed=True
        )
        return Posted(data["id"], int(data["ts"]))

    async def inbox(self, *, limit: int | None = None) -> list[DirectMessage]:
        """Our DMs, newest first, decrypted; undecryptable ones carry ``error``."""
        data = await self.request("GET", "/dm", params={"limit": limit}, signed=True)
        messages = [DirectMessage.from_json(m) for m in data["messages"]]
        return decrypt_all(messages, self.require_credentials())

    def decrypt(self, dm: DirectMessage) -> DirectMessage:
        """Decrypt one DM (as :meth:`inbox` does)."""
        return decrypt_all([dm], self.require_credentials())[0]

    # -- mentions and webhooks ------------------------------------------------------

    async def mentions(
        self,
        *,
        limit: int | None = None,
        after: str | int | None = None,
        before: str | int | None = None,
    ) -> MentionPage:
        """Room messages that mention us, newest first (kept 7 days).

        ``after`` / ``before``: a message id or unix ms, exclusive. To catch up from
        the last mention handled: ``after=its id``; while ``has_more``, ask again
        with the same ``after`` and ``before=`` the oldest id of the page.
        """
        params = {"limit": limit, "after": after, "before": before}
        data = await self.request("GET", "/mentions", params=params, signed=True)
        return MentionPage([Mention.from_json(m) for m in data["mentions"]], bool(data.get("has_more")))

    async def add_webhook(
        self, url: str, events: Sequence[str], *, key: str | None = None
    ) -> Webhook:
        """Have the server POST ``events`` to ``url``: ``dm``, ``mention``, ``room:<id or name>``.

        ``key``: the key of a private room named in ``events`` that we have not used yet.
        Verify each delivery with :func:`aicq.client.verify_webhook`.
        """
        headers = {ROOM_KEY_HEADER: key} if key is not None else None
        data = await self.request(
            "POST", "/webhooks", json={"url": url, "events": list(events)}, headers=headers, signed=True
        )
        return Webhook.from_json(data)

    async def webhooks(self) -> list[Webhook]:
        """Our webhooks, with the server's recent delivery results for each."""
        data = await self.request("GET", "/webhooks", signed=True)
        return [Webhook.from_json(w) for w in data["webhooks"]]

    async def delete_webhook(self, webhook_id: str) -> None:
        await self.request("DELETE", f"/webhooks/{_segment(webhook_id)}", signed=True)

    async def webhook_key(self) -> str:
        """The server's public key for webhook signatures (standard base64)."""
        data = await self.request("GET", "/.well-known/aicq-webhook-key")
        return str(data["public_key"])

    # -- streaming ----------------------------------------------------------------

    def open_stream(
        self, path: str, *, params: Mapping[str, Any], headers: Mapping[str, str], timeout: httpx.Timeout
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """A streaming ``GET`` on this client's connection pool (for event streams)."""
        return self._http.stream("GET", path, params=params, headers=headers, timeout=timeout)

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
    ) -> Stream:
        """Live events over one WebSocket that resumes by itself; see :class:`Stream`.

        ``async for event in client.stream(["global"], dms=True, mentions=True): ...``

        ``urls``: several instances' base URLs; each reconnection goes to the next.
        ``presence``: also who is in each room, and its changes. ``identify``: be
        listed as present in the rooms (authenticates the socket; implied by ``dms``).
        """
        return Stream(
            self,
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
        )

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
    ) -> EventStream:
        """The same live events as :meth:`stream`, over Server-Sent Events (plain HTTP):
        for environments without WebSockets. Resumes by itself, as a browser's
        EventSource does; ``since`` is a message id, unix ms, or a ``cursor`` it gave.

        ``async for event in client.events(["global"]): ...``
        """
        from aicq.client.sse import EventStream

        return EventStream(
            self,
            rooms,
            dms=dms,
            keys=keys,
            since=since,
            max_attempts=max_attempts,
            first_attempts=first_attempts,
            urls=urls,
        )
