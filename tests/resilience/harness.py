"""What the resilience scenarios share: steady posters, resuming subscribers, probes,
the record a scenario leaves, the verdicts its tests share, and its figures.

Every wait here is bounded, and every client records what happened to it rather
than asserting: a scenario runs to the end, then its tests judge the record. What
goes away during a scenario (a store, an instance) and how is ``outages``' business.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from aicq.client import AsyncClient
from aicq.client import Message as ClientMessage
from tests.helpers import Agent, ServerProcess
from tests.outages import Outage

R = TypeVar("R", bound="Record")

FAIL_FAST_S = 3.0  # "a few seconds": no request may take longer than this during an outage
REQUEST_TIMEOUT_S = 10.0  # the client's own bound, well past FAIL_FAST_S, so a hang shows
SUBSCRIBE_TIMEOUT_S = 10.0


def now() -> float:
    return time.monotonic()


def running_pid(server: ServerProcess) -> int:
    """The server's pid while its process runs; 0 once it has exited."""
    return next(iter(server.pids()), 0)


async def pause_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set first."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


class Waitable:
    """Something that changes over time and can be waited on until a condition holds."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait_until(self, condition: Any, timeout: float) -> bool:
        """True once ``condition()`` holds; False if ``timeout`` seconds pass first."""
        deadline = now() + timeout
        while not condition():
            remaining = deadline - now()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return bool(condition())
        return True


# Posting


@dataclass
class Attempt:
    """One POST /room/{id}: when, where, how long, and what came back."""

    poster: str
    seq: int
    body: str
    url: str
    started: float
    elapsed: float
    status: int | None  # None: no HTTP answer at all (refused, reset, timed out)
    answer: Any  # the JSON answer, or the transport error's text
    content_type: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == 201

    @property
    def id(self) -> str:
        assert self.accepted
        return self.answer["id"]

    @property
    def ended(self) -> float:
        return self.started + self.elapsed


class Poster(Waitable):
    """One agent posting to one room at a steady pace, recording every attempt.

    ``urls`` are instances in order of preference; after an attempt that got no HTTP
    answer the poster moves on to the next one, as a client with several instances
    would. With ``alternate`` it takes the instances in turn instead, dropping one
    from the turn once it stops answering. Bodies are ``<name>-<seq>`` so a message
    can be traced to its attempt.
    """

    def __init__(self, name: str, agent: Agent, room: str, urls: Sequence[str], interval: float,
                 *, alternate: bool = False, headers: dict[str, str] | None = None):
        super().__init__()
        self.name = name
        self.agent = agent
        self.room = room
        self.urls = list(urls)
        self.interval = interval
        self.alternate = alternate
        self.headers = headers or {}
        self.attempts: list[Attempt] = []
        self._current = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, headers=self.headers) as http:
            for seq in itertools.count():
                if stop.is_set():
                    return
                await self._attempt(http, seq)
                await pause_or_stop(stop, self.interval)

    async def _attempt(self, http: httpx.AsyncClient, seq: int) -> None:
        url = self.urls[self._current % len(self.urls)]
        body = f"{self.name}-{seq}"
        started = now()
        try:
            response = await self.agent.request(http, "POST", f"{url}/room/{self.room}", {"body": body})
        except httpx.TransportError as exc:
            if self.alternate and len(self.urls) > 1:
                self.urls.remove(url)
            else:
                self._current += 1
            attempt = Attempt(self.name, seq, body, url, started, now() - started, None,
                              f"{type(exc).__name__}: {exc}")
        else:
            try:
                answer = response.json()
            except ValueError:
                answer = response.text
            attempt = Attempt(self.name, seq, body, url, started, now() - started, response.status_code,
                              answer, response.headers.get("content-type", ""))
            if self.alternate:
                self._current += 1
        self.attempts.append(attempt)
        self.changed()

    @property
    def accepted(self) -> list[Attempt]:
        return [a for a in self.attempts if a.accepted]

    def accepted_since(self, moment: float) -> int:
        return sum(1 for a in self.attempts if a.accepted and a.started >= moment)

    async def wait_accepted_since(self, moment: float, count: int, timeout: float) -> bool:
        return await self.wait_until(lambda: self.accepted_since(moment) >= count, timeout)


class WsPoster(Poster):
    """A poster over one authenticated WebSocket session (``post`` ops), which it never
    reopens: if the server closes it, the close code is recorded and posting ends.

    An ``ok`` is recorded as status 201, an ``error`` with its code.
    """

    def __init__(self, name: str, agent: Agent, room: str, url: str, interval: float,
                 *, headers: dict[str, str] | None = None):
        super().__init__(name, agent, room, [url], interval, headers=headers)
        self.connections = 0
        self.closed: int | None = None  # the close code, if the session ended before the scenario

    async def run(self, stop: asyncio.Event) -> None:
        url = self.urls[0].replace("http://", "ws://") + "/ws"
        try:
            async with connect(url, additional_headers=self.headers, open_timeout=5, close_timeout=1,
                               compression=None) as ws:
                self.connections += 1
                await next_answer(ws, None, "hello")
                await ws.send(orjson.dumps(self.agent.auth_frame("auth")).decode())
                await next_answer(ws, "auth", "ok")
                self.changed()
                for seq in itertools.count():
                    if stop.is_set():
                        return
                    await self._post(ws, seq)
                    await pause_or_stop(stop, self.interval)
        except ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd is not None else 1006
            self.changed()

    async def _post(self, ws: ClientConnection, seq: int) -> None:
        body, ref = f"{self.name}-{seq}", f"p{seq}"
        started = now()
        await ws.send(orjson.dumps({"op": "post", "room": self.room, "body": body, "ref": ref}).decode())
        try:
            frame = await next_answer(ws, ref, None)
        except TimeoutError:
            frame = {"type": "timeout"}
        status = 201 if frame["type"] == "ok" else int(frame.get("code") or 0) or None
        self.attempts.append(Attempt(self.name, seq, body, self.urls[0], started, now() - started, status,
                                     frame, "application/json"))
        self.changed()


async def next_answer(ws: ClientConnection, ref: str | None, kind: str | None) -> dict:
    """The next frame answering ``ref`` (or of type ``kind``), skipping events."""
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        while True:
            frame = orjson.loads(await ws.recv())
            if (ref is None or frame.get("ref") == ref) and (kind is None or frame.get("type") == kind):
                return frame


def accepted_ids(posters: Iterable[Poster]) -> list[str]:
    return [a.id for p in posters for a in p.accepted]


def unconfirmed_bodies(posters: Iterable[Poster]) -> set[str]:
    """Bodies of attempts without a 201: the server may or may not have stored them."""
    return {a.body for p in posters for a in p.attempts if not a.accepted}


# Probing


@dataclass
class Sample:
    started: float
    elapsed: float
    status: int | None
    answer: Any
    content_type: str = ""


class Probe(Waitable):
    """GETs one URL at a steady pace (health, a room's history) and keeps every answer."""

    def __init__(self, url: str, interval: float = 0.1, *, headers: dict[str, str] | None = None):
        super().__init__()
        self.url = url
        self.interval = interval
        self.headers = headers or {}
        self.samples: list[Sample] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, headers=self.headers) as http:
            while not stop.is_set():
                self.samples.append(await fetch(http, "GET", self.url))
                self.changed()
                await pause_or_stop(stop, self.interval)

    def first(self, status: int, after: float) -> Sample | None:
        return next((s for s in self.samples if s.started >= after and s.status == status), None)

    async def wait_status_since(self, status: int, moment: float, timeout: float) -> Sample | None:
        await self.wait_until(lambda: self.first(status, moment) is not None, timeout)
        return self.first(status, moment)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.started and s.started + s.elapsed <= end]


async def fetch(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Sample:
    started = now()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        return Sample(started, now() - started, None, f"{type(exc).__name__}: {exc}")
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    return Sample(started, now() - started, response.status_code, answer,
                  response.headers.get("content-type", ""))


def clean_503(sample: Sample | Attempt) -> bool:
    """A refusal the SPEC allows during an outage: fast, 503, JSON with an error message."""
    return (
        sample.status == 503
        and sample.content_type.startswith("application/json")
        and isinstance(sample.answer, dict)
        and isinstance(sample.answer.get("error"), str)
        and bool(sample.answer["error"])
        and sample.elapsed < FAIL_FAST_S
    )


# Subscribing


class Tally(Waitable):
    """Every message event a subscriber was handed, in arrival order."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.deliveries: list[tuple[int, str]] = []  # (ts, id)
        self.arrived: dict[str, float] = {}  # id → when it first arrived
        self.counts: Counter[str] = Counter()
        self.cursor: tuple[int, str] | None = None  # the newest (ts, id) received
        self.ready = asyncio.Event()
        self.notes: list[str] = []

    def record(self, msg_id: str, ts: int) -> None:
        self.deliveries.append((ts, msg_id))
        self.counts[msg_id] += 1
        self.arrived.setdefault(msg_id, now())
        if self.cursor is None or (ts, msg_id) > self.cursor:
            self.cursor = (ts, msg_id)
        self.changed()

    def has(self, ids: Iterable[str]) -> bool:
        return all(i in self.counts for i in ids)

    async def wait_for_ids(self, ids: Sequence[str], timeout: float) -> bool:
        return await self.wait_until(lambda: self.has(ids), timeout)


class _Refused(Exception):
    """The server answered our subscribe with an error: try again later."""


class Subscriber(Tally):
    """A raw ``/ws`` client following one room, resuming like a careful client.

    After any disconnect it reconnects, to the next URL once a connection attempt
    fails, and subscribes with ``since`` = the newest message it holds. A subscribe
    refused with an error (503 while a store is away) is retried after a short pause.
    It never deduplicates: duplicates are what the scenarios count.
    """

    def __init__(self, name: str, urls: Sequence[str], room: str, *, headers: dict[str, str] | None = None):
        super().__init__(name)
        self.urls = list(urls)
        self.room = room
        self.headers = headers or {}
        self.connections = 0  # hellos received
        self.subscriptions = 0  # subscribe ok received
        self.refusals: list[tuple[int, str]] = []  # (code, error) of refused subscribes
        self.closes: list[int | None] = []  # close codes of connections that ended
        self.outages: list[tuple[float, float | None]] = []  # (lost, subscribed again)
        self.url_used: list[str] = []
        self._ws: ClientConnection | None = None
        self._refs = itertools.count(1)

    async def run(self) -> None:
        current, backoff = 0, 0.05
        while True:
            url = self.urls[current % len(self.urls)]
            hello = False
            try:
                async with connect(url.replace("http://", "ws://") + "/ws", open_timeout=5, close_timeout=1,
                                   compression=None, additional_headers=self.headers) as ws:
                    self._ws = ws
                    frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                    if frame.get("type") != "hello":
                        raise RuntimeError(f"expected hello, got {frame}")
                    hello = True
                    self.connections += 1
                    await self._follow(ws, url)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError, _Refused) as exc:
                if isinstance(exc, ConnectionClosed):
                    self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
                self.notes.append(f"{type(exc).__name__}: {exc}"[:160])
            finally:
                self._ws = None
            if self.ready.is_set() and (not self.outages or self.outages[-1][1] is not None):
                self.outages.append((now(), None))
            if not hello:
                current += 1
            await asyncio.sleep(backoff)  # a reconnect pause: nothing to wait for but time
            backoff = min(backoff * 2, 0.5)

    async def _follow(self, ws: ClientConnection, url: str) -> None:
        ref = f"s{next(self._refs)}"
        op: dict[str, Any] = {"op": "subscribe", "room": self.room, "ref": ref}
        if self.cursor is not None:
            op["since"] = self.cursor[1]
        await ws.send(orjson.dumps(op).decode())
        deadline = now() + SUBSCRIBE_TIMEOUT_S
        subscribed = False
        while True:
            timeout = None if subscribed else max(0.0, deadline - now())
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
            kind = frame.get("type")
            if kind == "message" and frame.get("room") == self.room:
                self.record(frame["msg"]["id"], int(frame["msg"]["ts"]))
            elif kind == "ok" and frame.get("ref") == ref:
                subscribed = True
                self.subscriptions += 1
                self.url_used.append(url)
                if self.outages and self.outages[-1][1] is None:
                    self.outages[-1] = (self.outages[-1][0], now())
                self.ready.set()
                self.changed()
            elif kind == "error" and frame.get("ref") == ref:
                self.refusals.append((int(frame.get("code") or 0), str(frame.get("error"))))
                raise _Refused(f"subscribe refused: {frame.get('code')} {frame.get('error')}")

    def drop(self) -> None:
        """Cut the TCP connection under the session, as a network failure would."""
        if self._ws is not None:
            self._ws.transport.abort()


class LibrarySubscriber(Tally):
    """The client library's resuming ``Stream``, over one instance or several (``urls``)."""

    def __init__(self, name: str, urls: Sequence[str], room: str):
        super().__init__(name)
        self.urls = list(urls)
        self.room = room
        self.stream: Any = None

    async def run(self) -> None:
        async with AsyncClient(self.urls[0]) as client:
            self.stream = client.stream([self.room], urls=self.urls)
            watcher = asyncio.create_task(self._watch_ready())
            try:
                async for event in self.stream:
                    if isinstance(event, ClientMessage):
                        self.record(event.id, event.ts)
                    else:
                        self.notes.append(repr(event)[:160])
            finally:
                watcher.cancel()
                await self.stream.aclose()

    async def _watch_ready(self) -> None:
        await self.stream.wait_ready()
        self.ready.set()

    @property
    def connections(self) -> int:
        return self.stream.connections if self.stream is not None else 0


async def start_all(subscribers: Sequence[Tally], timeout: float = SUBSCRIBE_TIMEOUT_S) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(s.run(), name=f"subscriber-{s.name}") for s in subscribers]
    waits = [asyncio.wait_for(s.ready.wait(), timeout) for s in subscribers]
    try:
        await asyncio.gather(*waits)
    except BaseException:
        await stop_all(tasks)
        raise
    return tasks


async def stop_all(tasks: Iterable[asyncio.Task]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# Verdicts


@dataclass
class Delivery:
    """What one subscriber got, judged against the accepted messages."""

    name: str
    delivered: int  # message events received, duplicates included
    distinct: int
    lost: list[str]  # accepted, never delivered
    duplicates: int  # events beyond the first for the same id
    unexpected: list[str]  # delivered, yet neither accepted nor an unconfirmed attempt
    out_of_order: int  # events not after the previous one in (ts, id) order

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicates and not self.unexpected and not self.out_of_order


def judge(tally: Tally, accepted: Sequence[str], maybe: set[str]) -> Delivery:
    """``maybe``: ids of messages stored though their poster saw no 201 (allowed extras)."""
    accepted_set = set(accepted)
    lost = [i for i in accepted if i not in tally.counts]
    duplicates = sum(n - 1 for n in tally.counts.values() if n > 1)
    unexpected = [i for i in tally.counts if i not in accepted_set and i not in maybe]
    out_of_order = sum(1 for a, b in itertools.pairwise(tally.deliveries) if b <= a)
    return Delivery(tally.name, len(tally.deliveries), len(tally.counts), lost, duplicates, unexpected,
                    out_of_order)


async def read_history(http: httpx.AsyncClient, base_url: str, room: str, max_pages: int = 100) -> list[dict]:
    """Every retained message of ``room``, newest first, paging with ``before=<id>``."""
    messages: list[dict] = []
    before: str | None = None
    for _ in range(max_pages):
        params: dict[str, Any] = {"limit": 200}
        if before is not None:
            params["before"] = before
        response = await http.get(f"{base_url}/room/{room}", params=params)
        if response.status_code != 200:
            raise RuntimeError(f"reading history failed: {response.status_code} {response.text}")
        page = response.json()
        messages += page["messages"]
        if not page["has_more"] or not page["messages"]:
            return messages
        before = page["messages"][-1]["id"]
    raise RuntimeError(f"history of {room} has more than {max_pages} pages")


# The record of a scenario, and the verdicts scenarios share


@dataclass(kw_only=True)
class Record:
    """What a scenario did and saw: its posters' attempts, what its subscribers got,
    the room's history at the end. Its tests judge it; ``figures`` describe it."""

    posters: list[Poster]
    subscribers: list[Tally]
    history: list[dict] = field(default_factory=list)
    verdicts: list[Delivery] = field(default_factory=list)
    figures: Figures

    @property
    def accepted(self) -> list[str]:
        return accepted_ids(self.posters)

    @property
    def maybe(self) -> set[str]:
        """Stored messages whose poster saw no 201 (the reply was lost in the outage)."""
        bodies = unconfirmed_bodies(self.posters)
        return {m["id"] for m in self.history if m["body"] in bodies}

    @asynccontextmanager
    async def in_motion(self, *clients: Poster | Probe, catch_up_s: float) -> AsyncIterator[None]:
        """Subscribers listening and ``clients`` (posters, probes) running for the block.
        After it the clients stop, and the subscribers get ``catch_up_s`` to receive
        every accepted message before they stop too."""
        listening = await start_all(self.subscribers)
        stop = asyncio.Event()
        traffic = [asyncio.create_task(client.run(stop)) for client in clients]
        try:
            try:
                yield
            finally:
                stop.set()
                await asyncio.gather(*traffic)
            await self.catch_up(catch_up_s)
        finally:
            await stop_all(listening)

    async def catch_up(self, timeout: float) -> None:
        """Until every subscriber holds every accepted message (or ``timeout``)."""
        accepted = self.accepted
        await asyncio.gather(*(s.wait_for_ids(accepted, timeout) for s in self.subscribers))

    async def finish(self, http: httpx.AsyncClient, base_url: str, room: str) -> None:
        """Read the room's history and judge every subscriber against it."""
        self.history = await read_history(http, base_url, room)
        accepted, maybe = self.accepted, self.maybe
        self.verdicts = [judge(s, accepted, maybe) for s in self.subscribers]

    def add_delivery_figures(self) -> None:
        add_delivery_figures(self.figures, self.verdicts)
        self.figures.add("lost (all subscribers)", sum(len(v.lost) for v in self.verdicts))
        self.figures.add("duplicates (all subscribers)", sum(v.duplicates for v in self.verdicts))

    def report(self, figures_log: list[str]) -> None:
        rendered = self.figures.render()
        print(rendered)
        figures_log.append(rendered)


@dataclass(kw_only=True)
class OutageRecord(Record):
    """The record of a scenario with one poster and one outage in it (``outages.away``)."""

    absence: Outage | None = None

    @property
    def poster(self) -> Poster:
        return self.posters[0]

    # The outage's moments (monotonic): it began, the target was away, it was asked to
    # come back, it was back and answering.
    @property
    def stopping(self) -> float:
        return self.absence.asked if self.absence else 0.0

    @property
    def down(self) -> float:
        return self.absence.gone if self.absence else 0.0

    @property
    def starting(self) -> float:
        return self.absence.returning if self.absence else 0.0

    @property
    def up(self) -> float:
        return self.absence.back if self.absence else 0.0


async def play(scenario: Awaitable[R], timeout: float) -> R:
    """Run a scenario to its end, within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await scenario


def check_history_holds_each_accepted_once(record: Record) -> None:
    ids = [m["id"] for m in record.history]
    accepted = record.accepted
    print(f"history {len(ids)} messages, accepted {len(accepted)}, stored without a 201 {len(record.maybe)}")
    assert len(ids) == len(set(ids)), "a message appears twice in history"
    assert not set(accepted) - set(ids), "accepted messages missing from history"
    assert set(ids) <= set(accepted) | record.maybe


def check_each_subscriber_got_each_accepted_once(record: Record, *, in_order: bool = True) -> None:
    """Nothing accepted lost, nothing doubled, nothing unknown; and in (ts, id) order,
    unless ``in_order`` is False (a scenario that judges order in a test of its own)."""
    for v in record.verdicts:
        print(f"{v.name}: delivered {v.delivered}, lost {len(v.lost)}, duplicates {v.duplicates}, "
              f"unexpected {len(v.unexpected)}, out of order {v.out_of_order}")
    wrong = [v for v in record.verdicts
             if v.lost or v.duplicates or v.unexpected or (in_order and v.out_of_order)]
    assert not wrong, wrong


# Figures


@dataclass
class Figures:
    """A scenario's numbers, printed with the tests and in the run's summary."""

    scenario: str
    rows: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, float):
            value = f"{value:.2f}s"
        self.rows.append((name, value))

    def render(self) -> str:
        width = max((len(name) for name, _ in self.rows), default=0)
        lines = [f"== {self.scenario} =="]
        lines += [f"  {name.ljust(width)}  {value}" for name, value in self.rows]
        return "\n".join(lines)


def add_delivery_figures(figures: Figures, verdicts: Iterable[Delivery]) -> None:
    for v in verdicts:
        figures.add(f"delivered to {v.name}",
                    f"{v.delivered} events, {v.distinct} distinct, lost {len(v.lost)}, "
                    f"duplicates {v.duplicates}, unexpected {len(v.unexpected)}, "
                    f"out of order {v.out_of_order}")


def unavailable_span(posters: Iterable[Poster], start: float) -> tuple[float | None, float | None]:
    """(first refused attempt, first accepted attempt after it), both at or after ``start``."""
    attempts = sorted((a for p in posters for a in p.attempts if a.started >= start), key=lambda a: a.started)
    first_bad = next((a for a in attempts if not a.accepted), None)
    if first_bad is None:
        return None, None
    first_good = next((a for a in attempts if a.accepted and a.started > first_bad.started), None)
    return first_bad.started, first_good.started if first_good else None
