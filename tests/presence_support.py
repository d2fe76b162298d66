"""Presence test support: a WebSocket that follows rooms and keeps every frame it got."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers import Agent

EVENT_TIMEOUT_S = 10.0


class Follower:
    """One /ws session: requests by ref, and every other frame kept, in order."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.hello: dict = {}
        self.frames: list[dict] = []
        self._answers: dict[str, asyncio.Future[dict]] = {}
        self._arrived = asyncio.Event()
        self._refs = (f"r{n}" for n in itertools.count())
        self._reader: asyncio.Task[None] | None = None
        self.closed: int | None = None  # the close code, once closed

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                waiting = self._answers.pop(frame.get("ref"), None) if frame.get("type") in ("ok", "error") else None
                if waiting is not None:
                    waiting.set_result(frame)
                else:
                    self.frames.append(frame)
                self._arrived.set()
        finally:
            self.closed = self.ws.close_code
            self._arrived.set()

    async def request(self, op: str, **args: Any) -> dict:
        ref = next(self._refs)
        self._answers[ref] = asyncio.get_running_loop().create_future()
        await self.ws.send(orjson.dumps({"op": op, "ref": ref, **args}).decode())
        return await asyncio.wait_for(self._answers[ref], EVENT_TIMEOUT_S)

    async def subscribe(self, room: str, **args: Any) -> dict:
        answer = await self.request("subscribe", room=room, **args)
        assert answer["type"] == "ok", answer
        return answer

    async def wait_for(self, predicate: Callable[[dict], bool], timeout: float = EVENT_TIMEOUT_S) -> dict:
        """The first kept frame matching ``predicate`` (already kept ones included)."""
        async def scan() -> dict:
            seen = 0
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = len(self.frames)
                if self.closed is not None:
                    raise ConnectionError(f"closed with {self.closed} before the frame came")
                self._arrived.clear()
                await self._arrived.wait()
        return await asyncio.wait_for(scan(), timeout)

    def present(self, room: str, roster: dict) -> set[str]:
        """Who is in ``room`` as a client following it knows: ``roster`` (its subscribe's),
        then every presence event since, applied in order."""
        here = {entry["id"] for entry in roster["agents"]}
        for frame in self.frames:
            if frame.get("room") != room:
                continue
            if frame.get("type") == "presence":
                here = {entry["id"] for entry in frame["agents"]}
            elif frame.get("type") == "join":
                here.add(frame["agent"]["id"])
            elif frame.get("type") == "leave":
                here.discard(frame["agent"]["id"])
        return here

    async def until_present(self, room: str, roster: dict, agents: set[str],
                            timeout: float = EVENT_TIMEOUT_S) -> None:
        """Wait until the presence this session was told of is exactly ``agents``."""
        async with asyncio.timeout(timeout):
            while self.present(room, roster) != agents:
                if self.closed is not None:
                    raise ConnectionError(f"closed with {self.closed}")
                self._arrived.clear()
                await self._arrived.wait()

    def presence_events(self, room: str, but: str | None = None) -> list[tuple[str, str]]:
        """(kind, agent id) of every presence event of ``room`` so far (none about ``but``)."""
        return [(f["type"], f["agent"]["id"]) for f in self.frames
                if f.get("type") in ("join", "leave", "status") and f.get("room") == room
                and f["agent"]["id"] != but]


@contextlib.asynccontextmanager
async def follower(url: str, agent: Agent | None = None, **headers: str) -> AsyncIterator[Follower]:
    """A session on ``url`` (authenticated as ``agent`` by the signed upgrade, if given)."""
    if agent is not None:
        headers.update(agent.headers(b""))
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        session = Follower(ws)
        session.hello = orjson.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT_S))
        session._reader = asyncio.create_task(session._read())
        try:
            yield session
        finally:
            session._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session._reader


def event(kind: str, room: str, agent: str) -> Callable[[dict], bool]:
    return lambda f: f.get("type") == kind and f.get("room") == room and f["agent"]["id"] == agent


def listed(roster: dict) -> dict[str, dict]:
    """Agent id → entry of a roster (``{agents, readers}``)."""
    return {entry["id"]: entry for entry in roster["agents"]}
