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
from typing import Any, Generic, TypeVar

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
        self.index: KeyIndex | None = None  # with other workers: the keys by hash, for their replacements
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
            self.index.add(key)
        self.budget.held += self._size(key, value)
        self.trim()

    def pop(self, key: str) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self.budget.held -= self._size(key, value)
        return value

    def trim(self) -> None:
        """Drop the oldest entries past the count, or while the tables are past their budget (the newest stays)."""
        items = self._items
        while len(items) > self.entries or (self.budget.held > self.budget.limit and len(items) > 1):
            key, value = items.popitem(last=False)
            self.budget.held -= self._size(key, value)

    def clear(self) -> None:
        for key, value in self._items.items():
            self.budget.held -= self._size(key, value)
        self._items.clear()

    def held_keys(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, V]]:
        return list(self._items.items())

    def values(self) -> list[V]:
        return list(self._items.values())


class KeyIndex:
    """The keys some tables hold, by their hash (epoch.key_hash): what another worker's replacement names is found
    without hashing every key held. A key the tables dropped since stays here until it is rebuilt, past four times
    what they hold at most, or past their budget's bytes more than it held when rebuilt (long keys: a count alone
    let the keys the tables had dropped hold hundreds of MB): a hash found is a key to drop if held, never more."""

    __slots__ = ("_by_hash", "_bytes", "_most", "_tables")

    def __init__(self, tables: tuple[Held[Any], ...]) -> None:
        self._tables = tables
        self._by_hash: dict[int, str] = {}
        self._bytes = self._most = 0
        for table in tables:
            table.index = self
        self.rebuild()

    def add(self, key: str) -> None:
        self._by_hash[key_hash(key)] = key
        self._bytes += ENTRY_BYTES + len(key)
        if self._bytes > self._most or len(self._by_hash) > 4 * sum(t.entries for t in self._tables) + 1024:
            self.rebuild()

    def take(self, h: int) -> str | None:
        return self._by_hash.pop(h, None)

    def rebuild(self) -> None:
        self._by_hash = {key_hash(k): k for table in self._tables for k in table.held_keys()}
        self._bytes = sum(ENTRY_BYTES + len(k) for k in self._by_hash.values())
        self._most = self._bytes + max(t.budget.limit for t in self._tables)
