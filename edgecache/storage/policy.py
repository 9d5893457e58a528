"""Admission and eviction over byte sizes: S3-FIFO (Yang et al., SOSP 2023), and plain LRU to compare with.

Pure bookkeeping of keys and sizes, no values, so the same class drives the memory tier and the loadtest
simulator. admit() only decides: it returns the keys to drop and the caller frees their values afterwards
(STYLE.md example 3, "decide under the lock, do the work after").

Both policies keep `used_bytes <= budget` at all times: an item over `max_item` (at most the budget) is never
admitted, and admit() evicts before it accounts the new item.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

MAX_FREQ = 3  # S3-FIFO's 2-bit counter: a few reuses earn a few second chances, no more
# The ghost holds about as many keys as main. The floor lets a cold tier (main still empty) recognise quick
# returns at all; keys only, so even a generous floor costs little memory.
GHOST_FLOOR = 1024


class EvictionPolicy(Protocol):
    @property
    def budget(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    def admit(self, key: str, size: int) -> list[str]: ...
    def resize(self, budget: int) -> list[str]: ...
    def touch(self, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


def _max_item(budget: int, max_item_fraction: float) -> int:
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if max_item_fraction <= 0:
        raise ValueError(f"max_item_fraction must be > 0, got {max_item_fraction}")
    # Clamped to the budget: an item bigger than the whole tier could never fit, whatever the fraction says.
    return min(budget, int(budget * max_item_fraction))


class LRUPolicy:
    """Least recently used over bytes: the baseline the simulator compares S3-FIFO with."""

    def __init__(self, budget: int, max_item_fraction: float = 1 / 8) -> None:
        self.max_item = _max_item(budget, max_item_fraction)
        self.budget = budget
        self.used_bytes = 0
        self._items: OrderedDict[str, int] = OrderedDict()  # key -> size, least recently used first

    def admit(self, key: str, size: int) -> list[str]:
        # A replaced value is accounted afresh; if the new one is too big the old one goes too (never stale bytes).
        self.remove(key)
        if size > self.max_item:
            return [key]
        evicted = self._make_room(size)
        self._items[key] = size
        self.used_bytes += size
        return evicted

    def resize(self, budget: int) -> list[str]:
        """A new budget (the largest item stays as it was); the keys dropped to fit it, oldest first."""
        self.budget = budget
        return self._make_room(0)

    def _make_room(self, size: int) -> list[str]:
        """Evict least recently used first until `size` more bytes fit."""
        evicted = []
        while self.used_bytes + size > self.budget and self._items:
            old, old_size = self._items.popitem(last=False)
            self.used_bytes -= old_size
            evicted.append(old)
        return evicted

    def touch(self, key: str) -> None:
        if key in self._items:
            self._items.move_to_end(key)

    def remove(self, key: str) -> None:
        size = self._items.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class S3FIFOPolicy:
    """A small FIFO filters one-hit wonders; a main FIFO with second chances keeps what is reused; a ghost FIFO of
    keys recently dropped from small sends a quick return straight to main.

    A hit only bumps a capped counter (no list moves), which keeps touch() cheap on the hot path; the queues are
    reordered only at eviction time, amortised O(1) because every reinsertion spends one unit of a counter.
    """

    def __init__(self, budget: int, max_item_fraction: float = 1 / 8, small_fraction: float = 0.1) -> None:
        if not 0 < small_fraction < 1:
            raise ValueError(f"small_fraction must be in (0, 1), got {small_fraction}")
        self.max_item = _max_item(budget, max_item_fraction)
        self.budget = budget
        self.small_fraction = small_fraction
        self.small_budget = max(1, int(budget * small_fraction))
        self.used_bytes = 0
        self.small_bytes = 0
        # key -> size, oldest first. A key is in at most one of small and main, and in _freq iff in one of them.
        self._small: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, int] = OrderedDict()
        self._freq: dict[str, int] = {}
        self._ghost: OrderedDict[str, None] = OrderedDict()

    def admit(self, key: str, size: int) -> list[str]:
        # A replaced value keeps its queue and counter: refreshing a hot slice must not send it back on probation.
        was_main = key in self._main
        freq = self._freq.get(key, 0)
        self.remove(key)
        if size > self.max_item:
            return [key]
        # Read (and consume) the ghost before evicting: this admit's own evictions may push the key out of it.
        in_ghost = key in self._ghost
        if in_ghost:
            del self._ghost[key]
        to_main = was_main or in_ghost
        evicted = self._make_room(size)
        self._freq[key] = freq
        if to_main:
            self._main[key] = size
        else:
            self._small[key] = size
            self.small_bytes += size
        self.used_bytes += size
        return evicted

    def resize(self, budget: int) -> list[str]:
        """A new budget (the largest item stays as it was); the keys dropped to fit it, in eviction order."""
        self.budget = budget
        self.small_budget = max(1, int(budget * self.small_fraction))
        return self._make_room(0)

    def _make_room(self, size: int) -> list[str]:
        evicted: list[str] = []
        while self.used_bytes + size > self.budget and (self._small or self._main):
            self._evict_one(evicted)
        return evicted

    def _evict_one(self, evicted: list[str]) -> None:
        """One step of eviction: may free an item, or only move one (promotion, second chance)."""
        if self._small and (self.small_bytes >= self.small_budget or not self._main):
            self._evict_small(evicted)
        else:
            self._evict_main(evicted)

    def _evict_small(self, evicted: list[str]) -> None:
        key, size = self._small.popitem(last=False)
        self.small_bytes -= size
        if self._freq[key] > 0:
            self._freq[key] = 0  # reused while on probation: promoted, and must earn its second chances in main
            self._main[key] = size
            return
        self._forget(key, size, evicted)
        self._ghost[key] = None
        limit = max(len(self._main), GHOST_FLOOR)
        while len(self._ghost) > limit:
            self._ghost.popitem(last=False)

    def _evict_main(self, evicted: list[str]) -> None:
        key, size = self._main.popitem(last=False)
        freq = self._freq[key]
        if freq > 0:
            self._freq[key] = freq - 1
            self._main[key] = size  # second chance: back to the tail of the FIFO (the newest end)
            return
        self._forget(key, size, evicted)

    def _forget(self, key: str, size: int, evicted: list[str]) -> None:
        self.used_bytes -= size
        del self._freq[key]
        evicted.append(key)

    def touch(self, key: str) -> None:
        freq = self._freq.get(key)
        if freq is not None and freq < MAX_FREQ:
            self._freq[key] = freq + 1

    def remove(self, key: str) -> None:
        if key in self._small:
            size = self._small.pop(key)
            self.small_bytes -= size
        elif key in self._main:
            size = self._main.pop(key)
        else:
            return
        self.used_bytes -= size
        del self._freq[key]

    def in_main(self, key: str) -> bool:
        return key in self._main

    def in_ghost(self, key: str) -> bool:
        return key in self._ghost

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)


def make_policy(name: str, budget: int, max_item_fraction: float = 1 / 8) -> EvictionPolicy:
    if name == "lru":
        return LRUPolicy(budget, max_item_fraction)
    if name == "s3fifo":
        return S3FIFOPolicy(budget, max_item_fraction)
    raise ValueError(f"unknown memory policy {name!r} (expected 's3fifo' or 'lru')")
