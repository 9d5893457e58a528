"""Admission and eviction over byte sizes: S3-FIFO (Yang et al., SOSP 2023), and plain LRU to compare with.

Plain bookkeeping with no values, so the same class drives the memory tier and the loadtest simulator. admit()
returns the keys to drop; the caller frees their values afterwards (decide here, do the work outside).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class EvictionPolicy(Protocol):
    budget: int
    used_bytes: int

    def admit(self, key: str, size: int) -> list[str]: ...
    def touch(self, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


class LRUPolicy:
    def __init__(self, budget: int, max_item_fraction: float = 1 / 8) -> None:
        self.budget = budget
        self.max_item = int(budget * max_item_fraction)
        self.used_bytes = 0
        self._items: OrderedDict[str, int] = OrderedDict()

    def admit(self, key: str, size: int) -> list[str]:
        self.remove(key)
        if size > self.max_item:
            return [key]
        evicted = []
        while self.used_bytes + size > self.budget and self._items:
            old, old_size = self._items.popitem(last=False)
            self.used_bytes -= old_size
            evicted.append(old)
        self._items[key] = size
        self.used_bytes += size
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
    """A small FIFO filters one-hit wonders; a main FIFO with second chances keeps what is reused; a ghost
    FIFO of recently evicted keys sends a quick return straight to main."""

    def __init__(self, budget: int, max_item_fraction: float = 1 / 8, small_fraction: float = 0.1) -> None:
        self.budget = budget
        self.max_item = int(budget * max_item_fraction)
        self.small_budget = max(1, int(budget * small_fraction))
        self.used_bytes = 0
        self._small: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest first
        self._main: OrderedDict[str, int] = OrderedDict()
        self._small_bytes = 0
        self._freq: dict[str, int] = {}
        self._ghost: OrderedDict[str, None] = OrderedDict()

    def admit(self, key: str, size: int) -> list[str]:
        self.remove(key)
        if size > self.max_item:
            return [key]
        evicted: list[str] = []
        while self.used_bytes + size > self.budget and (self._small or self._main):
            self._evict_one(evicted)
        self._freq[key] = 0
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = size
        else:
            self._small[key] = size
            self._small_bytes += size
        self.used_bytes += size
        return evicted

    def _evict_one(self, evicted: list[str]) -> None:
        if self._small and (self._small_bytes >= self.small_budget or not self._main):
            key, size = self._small.popitem(last=False)
            self._small_bytes -= size
            if self._freq.get(key, 0) > 0:
                self._freq[key] = 0
                self._main[key] = size  # reused while on probation: promote
                return
            self._forget(key, size, evicted)
            self._ghost[key] = None
            while len(self._ghost) > max(len(self._main), 1024):
                self._ghost.popitem(last=False)
            return
        key, size = self._main.popitem(last=False)
        if self._freq.get(key, 0) > 0:
            self._freq[key] -= 1
            self._main[key] = size  # second chance: back to the head
            return
        self._forget(key, size, evicted)

    def _forget(self, key: str, size: int, evicted: list[str]) -> None:
        self.used_bytes -= size
        self._freq.pop(key, None)
        evicted.append(key)

    def touch(self, key: str) -> None:
        if key in self._freq:
            self._freq[key] = min(self._freq[key] + 1, 3)

    def remove(self, key: str) -> None:
        if key in self._small:
            size = self._small.pop(key)
            self._small_bytes -= size
        elif key in self._main:
            size = self._main.pop(key)
        else:
            return
        self.used_bytes -= size
        self._freq.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)


def make_policy(name: str, budget: int) -> EvictionPolicy:
    if name == "lru":
        return LRUPolicy(budget)
    if name == "s3fifo":
        return S3FIFOPolicy(budget)
    raise ValueError(f"unknown memory policy {name!r}")
