"""The tables of metadata, primary records and write marks a Store keeps at hand, bounded together by bytes as
well as each by its count of entries.

A count alone let long keys take a worker far past its memory budget: 8 KB URLs held 16,384 times in each table
(the key in every one) took a worker to 112.7 MiB of RSS against 80 for 36 s, until the RSS bound had lowered
the count enough. Each entry is charged its key and what its value holds (the fields of a copy's metadata), as
core.memo charges the fast path's memos; an addition that takes the tables past their budget drops the oldest
entries of its own table (its newest is kept: a fill's metadata is visible at once, whatever its size).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from edgecache.storage.epoch import key_hash

V = TypeVar("V")

# A Python str of n ASCII characters holds 49 + n bytes; an entry of an OrderedDict some 100 more.
ENTRY_BYTES = 160


class Budget:
    """The bytes all the tables that share it hold together, and the most they may."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0


class Held(Generic[V]):
    """An LRU table of at most `entries` entries (set by its owner) whose cost counts against `budget`."""

    __slots__ = ("_cost", "_items", "budget", "entries", "get", "index", "touch")

    def __init__(self, budget: Budget, entries: int, cost: Callable[[V], int]) -> None:
        self.budget = budget
        self.entries = entries
        self._cost = cost
        self._items: OrderedDict[str, V] = OrderedDict()
        # With other workers (index_keys): its keys by their hash (epoch.key_hash), kept exactly as the table is,
        # so what another worker's replacement names is found without hashing every key held.
        self.index: dict[int, str] | None = None
        # Asked on every hit (Hit.same_basis, Store.touch_meta): the table's own methods, with no frame of ours
        # around them (methods here cost a hit 0.3 µs more than the plain OrderedDict before it). touch() raises
        # KeyError for a key not held, as move_to_end does.
        self.get: Callable[[str], V | None] = self._items.get
        self.touch: Callable[[str], None] = self._items.move_to_end

    def _size(self, key: str, value: V) -> int:
        return ENTRY_BYTES + len(key) + self._cost(value)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, value: V) -> None:
        self.pop(key)
        self._items[key] = value
        if self.index is not None:
            self.index[key_hash(key)] = key
        self.budget.held += self._size(key, value)
        self.trim()

    def pop(self, key: str) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self._gone(key, value)
        return value

    def _gone(self, key: str, value: V) -> None:
        self.budget.held -= self._size(key, value)
        if self.index is not None:
            self.index.pop(key_hash(key), None)

    def index_keys(self) -> None:
        """Keep the index of its keys from now on (made of what it holds now)."""
        if self.index is None:
            self.index = {key_hash(k): k for k in self._items}

    def pop_hashed(self, h: int) -> None:
        """Drop the entry whose key has hash `h` (index_keys), if held."""
        key = self.index.get(h) if self.index is not None else None
        if key is not None:
            self.pop(key)

    def trim(self) -> None:
        """Drop the oldest entries past the count, or while the tables are past their budget (the newest stays)."""
        items = self._items
        while len(items) > self.entries or (self.budget.held > self.budget.limit and len(items) > 1):
            key, value = items.popitem(last=False)
            self._gone(key, value)

    def clear(self) -> None:
        for key, value in self._items.items():
            self.budget.held -= self._size(key, value)
        self._items.clear()
        if self.index is not None:
            self.index.clear()

    def items(self) -> list[tuple[str, V]]:
        return list(self._items.items())

    def values(self) -> list[V]:
        return list(self._items.values())
