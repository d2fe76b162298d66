"""A bounded least-recently-used mapping, for the caches in front of the stores."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class LRU(OrderedDict):
    """A bounded mapping that forgets the least recently used entry."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)
