"""How many live sessions each client holds on this instance, capped per client.

A live session (a WebSocket, an SSE stream) costs memory for as long as it stays
open, whatever it does, so no client may hold more than ``MAX_SESSIONS_PER_IP`` of
them on one instance. Every streaming transport takes a slot before it starts and
gives it back when it ends; the client key is ``request.client_ip``'s (an IPv4
address or an IPv6 network), so rotating addresses inside a /64 buys nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aicq.errors import RateLimited

# Sessions ended by a deploy come back within seconds; a refused one waits this long.
RETRY_AFTER_S = 10


class TooManySessions(RateLimited):
    def __init__(self, limit: int):
        super().__init__(
            f"too many open sessions from your address (at most {limit} per server); "
            "close one or try again later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


class SessionSlots:
    """Open sessions per client key, at most ``limit`` each. Loop thread only."""

    def __init__(self, limit: int):
        assert limit > 0
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Take a slot for ``key``; False when it already holds ``limit``."""
        held = self._open.get(key, 0)
        if held >= self.limit:
            return False
        self._open[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._open.get(key, 0)
        assert held > 0, f"release without acquire for {key}"
        if held == 1:
            del self._open[key]  # the map holds only clients with sessions open
        else:
            self._open[key] = held - 1

    def held(self, key: str) -> int:
        return self._open.get(key, 0)

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        """Hold a slot for the ``with`` block.

        Raises:
            TooManySessions: ``key`` already holds ``limit`` sessions (429, Retry-After).
        """
        if not self.acquire(key):
            raise TooManySessions(self.limit)
        try:
            yield
        finally:
            self.release(key)
