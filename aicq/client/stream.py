"""One WebSocket to ``/ws`` that survives disconnects without gaps or duplicates.

Each connection: read ``hello``; send ``auth`` (when DMs are wanted) and one
``subscribe`` per room carrying ``since`` = the newest message id seen there;
then hand over events (:meth:`Stream.follow` adds a room to a running stream).
Any disconnect other than "fix the request first" (close 1008 / 1009, or a 4xx
refusal) leads to a new connection after an exponential pause with jitter. DMs
have no replay over the socket, so after each ``auth`` the stream reads
``GET /dm`` and yields what it has not seen; mentions likewise, from
``GET /mentions``.

Given several base URLs (instances of one deployment), each new connection goes
to the next one in turn, so a stream closed by an instance that is shutting
down (1012) resumes on another at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from aicq.client.auth import auth_frame
from aicq.client.errors import (
    AICQError,
    APIError,
    RateLimited,
    ServerError,
    StreamClosed,
    TransportError,
    error_for,
)
from aicq.client.models import DirectMessage, Event, Gap, Mention, Room
from aicq.client.resume import ResumeState
from aicq.protocol import should_reconnect

if TYPE_CHECKING:
    from aicq.client.api import AsyncClient



MENTION_CATCH_UP_PAGES = 10  # the server keeps at most 1,000 mentions per agent



def ws_url_for(base_url: str) -> str:
    """``http://host:port`` → ``ws://host:port/ws`` (``https`` → ``wss``)."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/ws"
    return base + "/ws"

class _Retry(Exception):
    """This connection is done; make another."""


@dataclass
class _Pending:
    """An op sent on the current connection, waiting for its ``ok`` or ``error``."""

    what: str  # "auth" or "subscribe"
    room: str
    deadline: float  # loop time
    resumed: bool = False  # a subscribe that carried ``since``


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (_Retry, TransportError, RateLimited, ServerError, OSError, TimeoutError)):
        return True
    if isinstance(exc, ConnectionClosed):
        return exc.rcvd is None or should_reconnect(exc.rcvd.code)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return status == 429 or status >= 500
    return isinstance(exc, InvalidHandshake) and not isinstance(exc, InvalidURI)


def _retry_after(exc: BaseException) -> float:
    """The seconds a refusal asked us to wait (a 429 error frame or upgrade answer), else 0."""
    if isinstance(exc, RateLimited):
        return exc.retry_after or 0.0
    if isinstance(exc, InvalidStatus) and exc.response.status_code == 429:
        try:
            return max(0.0, float(exc.response.headers.get("Retry-After", 0)))
        except ValueError:
            return 0.0
    return 0.0


def _fatal(exc: BaseException) -> AICQError:
    """The error to raise for a failure :func:`_retryable` refused."""
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        reason = exc.rcvd.reason or "the server closed the stream"
        return StreamClosed(reason, exc.rcvd.code)
    if isinstance(exc, InvalidStatus):
        body = exc.response.body or b""
        try:
            message = orjson.loads(body).get("error") or "WebSocket upgrade refused"
        except (orjson.JSONDecodeError, AttributeError):
            message = "WebSocket upgrade refused"
        return error_for(exc.response.status_code, str(message))
    return TransportError(f"WebSocket failed: {exc}")


class Stream:
    """Live room messages, deletions, DMs and mentions, as one async iterator.

    Events are :class:`~aicq.client.models.Message`, ``Deleted``, ``DirectMessage``
    (decrypted, or with ``error``), ``Mention`` (a room message naming us) and
    ``Gap`` (a resume found history expired);
    with ``presence``, also ``Roster`` (who is in a room, on every (re)subscribe),
    ``Joined``, ``Left`` and ``StatusChanged``. Within a room, messages come in
    server order, each exactly once.

    Args:
        client: supplies the URL, credentials and REST calls.
        rooms: room ids or public room names.
        dms: also deliver DMs (needs registered credentials).
        mentions: also deliver mentions of us, from any room (needs registered
            credentials); none is missed across reconnects.
        keys: private room keys by room (as spelled in ``rooms``).
        since: resume each room after this message id.
        presence: ask for who is in each room (a ``Roster``) and its changes.
        identify: authenticate the connection even without ``dms``, so the agent
            is listed as present in its rooms (needs registered credentials).
        max_attempts: consecutive failed connection attempts before giving up
            (``None``: never give up).
        first_attempts: the same bound, but only until the first connection
            succeeds (a wrong URL fails fast; a stream that worked keeps trying).
        ready_timeout: bound, in seconds, on each attempt (connect, hello, auth,
            every subscribe answered).
        backoff: first pause between attempts; doubles up to ``max_backoff``,
            each pause randomised to between half and all of it.
        urls: base URLs of interchangeable instances (default: the client's URL).
            The first connection goes to the first; every reconnection, after a
            lost connection or a failed attempt, to the next one, round robin.
            The stream's REST calls (``GET /dm``) follow the current one.

    Raises (from iteration):
        APIError: a room or the credentials were refused (404, 403, 401, ...).
        StreamClosed: the server closed with 1008 or 1009.
        TransportError: ``max_attempts`` consecutive attempts failed.
    """

    def __init__(
        self,
        client: AsyncClient,
        rooms: Iterable[str] = (),
        *,
        dms: bool = False,
        mentions: bool = False,
        keys: Mapping[str, str] | None = None,
        since: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
        first_attempts: int | None = None,
        ready_timeout: float = 10.0,
        backoff: float = 0.25,
        max_backoff: float = 15.0,
        urls: Sequence[str] | None = None,
        presence: bool = False,
        identify: bool = False,
    ) -> None:
        self._client = client
        self.urls = [u.rstrip("/") for u in urls or ()] or [client.url]
        self._turn = 0
        self._dms = dms
        self._identify = identify
        self.state = ResumeState(rooms, keys, since, presence)
        self._mentions = mentions
        self.max_attempts = max_attempts
        self.first_attempts = first_attempts
        self.ready_timeout = ready_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.hello: dict[str, Any] | None = None
        self.connections = 0  # successful (ready) connections so far
        self.last_close: int | None = None  # close code of the last lost connection
        self._refs = (str(n) for n in itertools.count(1))
        self._gen: AsyncGenerator[Event, None] | None = None
        self._ready = asyncio.Event()
        self._ws: ClientConnection | None = None  # the current connection, once hello was read
        self._pending: dict[str, _Pending] = {}  # by ref, on the current connection
        self._followers: dict[str, asyncio.Future[Room]] = {}  # rooms added by follow()
        self._live = False  # the current connection has had every initial op answered

    # -- iteration ----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Close the socket and stop; iteration then ends."""
        for future in self._followers.values():
            future.cancel()
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def wait_ready(self) -> None:
        """Wait until a connection has every subscription confirmed (iteration drives it)."""
        await self._ready.wait()

    @property
    def url(self) -> str:
        """The base URL the current (or next) connection uses."""
        return self.urls[self._turn]

    def _rest(self, path: str) -> str:
        """``path`` on the current instance (relative when it is the client's own URL)."""
        return path if self.url == self._client.url else self.url + path

    def room_name(self, room_id: str) -> str:
        return self.state.room_names.get(room_id, room_id)

    @property
    def connected(self) -> bool:
        """Whether a connection is up and its initial subscriptions were confirmed."""
        return self._live

    async def follow(
        self, room: str, *, key: str | None = None, since: str | None = None
    ) -> Room:
        """Add ``room`` to the stream and return it once the server confirmed it.

        On a live connection the ``subscribe`` goes out at once; otherwise the next
        connection sends it with the others. A refusal (404, 403, ...) raises here
        and leaves the rest of the stream running. Someone must be iterating the
        stream for the answer to arrive; bound the wait with a timeout.

        Args:
            room: a room id or a public room's name.
            key: the private room's key.
            since: replay the room's history after this message id (or unix ms).
        """
        room_id = self.state.room_ids.get(room)
        if room_id is not None and room not in self._followers:
            return Room(room_id, self.room_name(room_id))
        future = self._followers.get(room)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._followers[room] = future
            future.add_done_callback(_consume_exception)
            if self.state.add_room(room, key, since) and self._ws is not None:
                with contextlib.suppress(ConnectionClosed):  # the next connection sends it
                    await self._subscribe(self._ws, room)
        return await asyncio.shield(future)

    # -- the loop -----------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[Event, None]:
        await self._prepare()
        failures = 0
        last_error = ""
        while True:
            ready_before = self.connections
            told_to_wait = 0.0
            try:
                # aclosing: closing the stream closes the connection now, not at collection.
                async with aclosing(self._connection()) as events:
                    async for event in events:
                        yield event
                raise _Retry("the server ended the stream")
            except Exception as exc:
                last_error = str(exc) or type(exc).__name__
                if isinstance(exc, ConnectionClosed):
                    self.last_close = exc.rcvd.code if exc.rcvd is not None else None
                if not _retryable(exc):
                    error = exc if isinstance(exc, AICQError) else _fatal(exc)
                    for future in self._followers.values():
                        if not future.done():
                            future.set_exception(error)
                    if error is exc:
                        raise
                    raise error from exc
                told_to_wait = _retry_after(exc)
            failures = 0 if self.connections > ready_before else failures + 1
            self._turn = (self._turn + 1) % len(self.urls)
            limit = self.max_attempts
            if self.connections == 0 and self.first_attempts is not None:
                limit = self.first_attempts if limit is None else min(limit, self.first_attempts)
            if limit is not None and failures >= limit:
                raise TransportError(
                    f"cannot connect to {', '.join(map(self._endpoint, self.urls))} "
                    f"after {failures} attempts: {last_error}"
                )
            # A 429 says how long to wait: coming back sooner only earns more refusals.
            await asyncio.sleep(max(self._pause(failures), told_to_wait))

    # -- the transport (a subclass may speak another one: see aicq.client.sse) -----

    def _endpoint(self, base_url: str) -> str:
        """What one connection attempt opens at ``base_url`` (for error messages)."""
        return ws_url_for(base_url)

    async def _prepare(self) -> None:
        """Once, before the first connection."""
        if self._dms or self._identify or self._mentions:
            self._client.require_credentials().require_id()

    async def _connection(self) -> AsyncIterator[Event]:
        """One connection: its events, until it ends (by an exception, or returning)."""
        if self._dms and self.state.dm_floor is None:
            # What the inbox holds when the stream starts is old news (the socket replays
            # no DMs; each ``auth`` catches up through ``GET /dm``). Reading it is retried
            # like a connection, so a server still down waits.
            inbox = await self._client.request("GET", self._rest("/dm"), signed=True)
            self.state.dm_baseline(inbox["messages"])
        if self._mentions and self.state.mention_floor is None:
            # Likewise the mentions already there (``GET /mentions`` catches up after auth).
            newest = await self._client.request(
                "GET", self._rest("/mentions"), params={"limit": 1}, signed=True
            )
            self.state.mention_baseline(newest["mentions"][0] if newest["mentions"] else None)
        async with connect(
            ws_url_for(self.url),
            open_timeout=self.ready_timeout,
            compression=None,
            max_size=1 << 20,
        ) as ws:
            try:
                async for event in self._session(ws):
                    yield event
            finally:
                self._ws = None
                self._live = False
                self._pending.clear()

    def _pause(self, failures: int) -> float:
        if failures == 0:
            return random.uniform(0, self.backoff)  # a clean restart (1012): come back soon
        ceiling = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _session(self, ws: ClientConnection) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        hello = await self._recv(ws, loop.time() + self.ready_timeout)
        if hello.get("type") != "hello":
            raise _Retry(f"expected hello, got {hello.get('type')!r}")
        self.hello = hello
        self._pending.clear()
        # From here on follow() sends its own subscribe; the rooms known now are sent
        # below, from a copy taken in the same step, so each goes out exactly once.
        self._ws = ws
        rooms = list(self.state.rooms)
        if self._dms or self._identify or self._mentions:
            ref = next(self._refs)
            self._pending[ref] = _Pending("auth", "", loop.time() + self.ready_timeout)
            await ws.send(
                orjson.dumps(auth_frame(self._client.require_credentials(), ref)).decode()
            )
        for room in rooms:
            await self._subscribe(ws, room)
        if not self._pending:
            self._mark_ready()
        while True:
            frame = await self._recv(ws, self._deadline())
            kind, ref = frame.get("type"), frame.get("ref")
            if kind in ("ok", "error") and isinstance(ref, str) and ref in self._pending:
                op = self._pending.pop(ref)
                if kind == "error":
                    retry_after = frame.get("retry_after")
                    error = error_for(int(frame.get("code") or 400), str(frame.get("error") or op.what),
                                      float(retry_after) if isinstance(retry_after, int | float) else None)
                    follower = self._followers.pop(op.room, None)
                    if follower is None:
                        raise error
                    self.state.drop_room(op.room)  # only this room was refused
                    if not follower.done():
                        follower.set_exception(error)
                elif op.what == "auth":
                    for dm in await self._dm_catch_up() if self._dms else ():
                        yield dm
                    for mention in await self._mention_catch_up() if self._mentions else ():
                        yield mention
                else:
                    gap: Gap | None = self.state.subscribed(op.room, frame, op.resumed)
                    self._confirm(op.room)
                    if gap is not None:
                        yield gap
                    roster = self.state.roster(op.room, frame) if self.state.presence else None
                    if roster is not None:
                        yield roster
                if not self._live and not self._pending:
                    self._mark_ready()
                continue
            event = self.state.accept(frame)
            if isinstance(event, DirectMessage):
                # An authenticated session gets both kinds: yield what was asked for.
                event = self._client.decrypt(event) if self._dms else None
            elif isinstance(event, Mention) and not self._mentions:
                event = None
            if event is not None:
                yield event

    async def _subscribe(self, ws: ClientConnection, room: str) -> None:
        ref = next(self._refs)
        op = self.state.subscribe_op(room, ref)
        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        self._pending[ref] = _Pending("subscribe", room, deadline, resumed="since" in op)
        await ws.send(orjson.dumps(op).decode())

    def _deadline(self) -> float | None:
        """When the oldest unanswered op times out (loop time); None if nothing is pending."""
        return min((op.deadline for op in self._pending.values()), default=None)

    def _confirm(self, room: str) -> None:
        follower = self._followers.pop(room, None)
        if follower is not None and not follower.done():
            room_id = self.state.room_ids.get(room, room)
            follower.set_result(Room(room_id, self.room_name(room_id)))

    def _mark_ready(self) -> None:
        self._live = True
        self.connections += 1
        self._ready.set()

    async def _recv(self, ws: ClientConnection, deadline: float | None) -> dict[str, Any]:
        """The next JSON object frame, within ``deadline`` (loop time) when given."""
        while True:
            if deadline is None:
                raw = await ws.recv()
            else:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise _Retry("the server did not answer in time")
                try:
                    raw = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    raise _Retry("the server did not answer in time") from None
            try:
                frame = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(frame, dict):
                return frame

    async def _mention_catch_up(self) -> list[Mention]:
        """Mentions that arrived while no socket of ours was authenticated, oldest first."""
        since, before = self.state.mention_since(), None
        fresh: list[Mention] = []
        for _ in range(MENTION_CATCH_UP_PAGES):
            params = {"limit": 100, "after": since, "before": before}
            try:
                page = await self._client.request(
                    "GET", self._rest("/mentions"), params=params, signed=True
                )
            except APIError as exc:
                if exc.status >= 500 or exc.status == 429:
                    raise _Retry(exc.message) from exc
                raise
            for msg in page["mentions"]:
                mention = self.state.accept_mention(msg, None, live=False)
                if mention is not None:
                    fresh.append(mention)
            if not page.get("has_more") or not page["mentions"]:
                break
            before = page["mentions"][-1]["id"]
        fresh.sort(key=lambda m: (m.ts, m.id))
        return fresh

    async def _dm_catch_up(self) -> list[DirectMessage]:
        """DMs that arrived while no socket of ours was authenticated, oldest first."""
        try:
            inbox = await self._client.request("GET", self._rest("/dm"), signed=True)
        except APIError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise _Retry(exc.message) from exc
            raise
        fresh = []
        for msg in reversed(inbox["messages"]):
            dm = self.state.accept_dm(msg, live=False)
            if dm is not None:
                fresh.append(self._client.decrypt(dm))
        fresh.sort(key=lambda dm: (dm.ts, dm.id))
        return fresh


def _consume_exception(future: asyncio.Future[Room]) -> None:
    """Mark a follower's error as seen: its caller may have stopped waiting."""
    if not future.cancelled():
        future.exception()
