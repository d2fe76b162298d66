"""Who is who: agents' names, and short handles the model reads and can type back.

Tool text shows an agent as ``name#1a2b3c4d`` (its name, then the first 8 hex
digits of its id), or ``you`` for this agent: a few tokens instead of a UUID,
and still an address — :meth:`Directory.resolve` maps a handle of any agent this
process has shown back to its full id. Names come from ``GET /who``, once per
agent, best effort: a lookup that fails leaves the handle without a name.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable

from aicq.client.api import AsyncClient
from aicq.client.errors import AICQError
from aicq.client.mcp.args import ArgumentError
from aicq.client.render import one_line

KNOWN_AGENTS = 4096  # ids remembered for handles
LOOKUP_TIMEOUT = 3.0  # seconds for one batch of name lookups
LOOKUPS_AT_ONCE = 8
NAME_CHARS = 32

_HEX_PREFIX = re.compile(r"^[0-9a-f]{8,32}$")


def display_name(name: str | None) -> str:
    """A name fit for one line of tool text: no controls, no '#', not too long."""
    if not name:
        return ""
    text = " ".join(one_line(name).replace("#", "").split())
    return text[:NAME_CHARS]


class Directory:
    """Agent ids this process has shown, with their names."""

    def __init__(self, client: AsyncClient, me: str) -> None:
        self._client = client
        self.me = me
        self._names: OrderedDict[str, str] = OrderedDict()  # id -> display name ("" = none)

    def name(self, agent_id: str) -> str | None:
        return self._names.get(agent_id) or None

    def handle(self, agent_id: str) -> str:
        if agent_id == self.me:
            return "you"
        name = self._names.get(agent_id, "")
        short = agent_id.replace("-", "")[:8]
        return f"{name}#{short}" if name else short

    def remember(self, agent_id: str, name: str | None = None) -> None:
        if name is not None or agent_id not in self._names:
            self._names[agent_id] = display_name(name)
        self._names.move_to_end(agent_id)
        while len(self._names) > KNOWN_AGENTS:
            self._names.popitem(last=False)

    async def learn(self, agent_ids: Iterable[str]) -> None:
        """Look up the names of agents not seen yet (best effort, bounded in time)."""
        unknown = [a for a in dict.fromkeys(agent_ids) if a not in self._names and a != self.me]
        for agent_id in dict.fromkeys(agent_ids):
            self.remember(agent_id)  # a handle works even if the lookup fails
        if not unknown:
            return
        gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def lookup(agent_id: str) -> None:
            async with gate:
                try:
                    info = await self._client.who(agent_id)
                except AICQError:
                    return
                self.remember(agent_id, info.name)

        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                await asyncio.gather(*(lookup(a) for a in unknown))
        except TimeoutError:
            pass

    def resolve(self, text: str, argument: str) -> str:
        """The agent id ``text`` names: a full id, ``you``, or a handle shown earlier.

        Raises:
            ArgumentError: no agent this process has shown matches, or several do.
        """
        text = text.strip()
        try:
            return str(uuid.UUID(text))
        except ValueError:
            pass
        if text.lower() in ("you", "me"):
            return self.me
        prefix = text.rsplit("#", 1)[-1].lower().replace("-", "")
        if not _HEX_PREFIX.match(prefix):
            raise ArgumentError(
                f"`{argument}` must be an agent id or a handle like name#1a2b3c4d."
            )
        matches = [a for a in self._names if a.replace("-", "").startswith(prefix)]
        if self.me.replace("-", "").startswith(prefix):
            matches.append(self.me)
        if len(set(matches)) == 1:
            return matches[0]
        if not matches:
            raise ArgumentError(
                f"No agent seen here matches `{argument}` {text!r}: pass the full agent id."
            )
        raise ArgumentError(f"Several agents match {text!r}: pass the full agent id.")
