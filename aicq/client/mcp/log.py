"""What the MCP server holds of one room (or of the DMs): an ordered, bounded log (pure).

The log is complete above its ``floor``: every message positioned after the floor
that the server has delivered is in it, in ``(ts, id)`` order, each once. When it
outgrows its capacity the oldest message leaves and the floor moves up to it, so
the promise still holds; asking for what lies below the floor means reading the
server's history instead (see :mod:`aicq.client.mcp.inbox`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from aicq.client.mcp.cursor import Position

CAPACITY = 500


class Positioned(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def ts(self) -> int: ...


T = TypeVar("T", bound=Positioned)


def position(item: Positioned) -> Position:
    return (item.ts, item.id)


class Log(Generic[T]):
    """Messages after ``floor``, oldest first, at most ``capacity`` of them."""

    def __init__(self, floor: Position | None, capacity: int = CAPACITY) -> None:
        assert capacity > 0
        self.floor = floor  # None: not known yet (nothing is promised)
        self.capacity = capacity
        self._items: list[T] = []
        self._keys: list[Position] = []
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def newest(self) -> Position | None:
        """The newest position held, else the floor."""
        return self._keys[-1] if self._keys else self.floor

    def covers(self, after: Position) -> bool:
        """Whether everything after ``after`` is here (nothing below the floor is asked)."""
        return self.floor is not None and after >= self.floor

    def add(self, item: T) -> bool:
        """Insert in order; False for a duplicate or anything at or below the floor."""
        at = position(item)
        if item.id in self._ids or (self.floor is not None and at <= self.floor):
            return False
        index = bisect.bisect(self._keys, at)
        self._keys.insert(index, at)
        self._items.insert(index, item)
        self._ids.add(item.id)
        while len(self._items) > self.capacity:
            self._ids.discard(self._items.pop(0).id)
            self.floor = self._keys.pop(0)
        return True

    def extend_down(self, items: Iterable[T], floor: Position) -> None:
        """Add history read from the server and lower the floor to ``floor``.

        ``items`` must be every message between ``floor`` and the current floor.
        """
        old_floor = self.floor
        self.floor = floor
        for item in items:
            if old_floor is None or position(item) <= old_floor:
                self.add(item)

    def remove(self, item_id: str) -> None:
        if item_id not in self._ids:
            return
        index = next(i for i, item in enumerate(self._items) if item.id == item_id)
        del self._items[index], self._keys[index]
        self._ids.discard(item_id)

    def after(self, at: Position) -> list[T]:
        """Every message held after ``at``, oldest first."""
        return self._items[bisect.bisect(self._keys, at) :]
