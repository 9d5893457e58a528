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
    max_item: int  # the largest size admitted

    @property
    def budget(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    def admit(self, key: str, size: int) -> list[str]: ...
    def resize(self, budget: int) -> list[str]: ...
    def touch(self, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def hottest(self) -> list[str]: ...
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

    def hottest(self) -> list[str]:
        """Every key held, the one this policy would evict last first: most recently used first."""
        return list(reversed(self._items))

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


SMALL, MAIN, GHOST = 0, 1, 2  # S3-FIFO's queues; a ghost entry is a key alone (size 0, no counter)


class Queues(Protocol):
    """Where S3-FIFO keeps its state: three FIFOs of keys (oldest first), sizes and capped counters.

    MemoryQueues holds it in dicts (the memory tier, the replays); storage.diskindex holds it in SQLite, shared by
    the worker processes, so the node's disk tier runs this very class over its own index.
    """

    def find(self, key: str) -> tuple[int, int, int] | None:
        """(queue, size, counter) of a key held or a ghost; None if neither."""
        ...

    def push(self, queue: int, key: str, size: int, freq: int) -> None:
        """Append a key (held nowhere) at the newest end of `queue`."""
        ...

    def oldest(self, queue: int) -> tuple[str, int, int] | None:
        """The key at the oldest end of `queue`, with its size and counter, removed from it."""
        ...

    def drop(self, key: str) -> None: ...
    def bump(self, key: str) -> None:
        """One more use of a held key: its counter goes up by one, to MAX_FREQ at most (a ghost has none)."""
        ...

    def count(self, queue: int) -> int: ...
    def bytes(self, queue: int) -> int: ...


class MemoryQueues:
    """S3-FIFO's state in dicts: a hit is one dict lookup and store, the memory tier's hot path."""

    def __init__(self) -> None:
        # key -> size, oldest first. A key is in at most one queue, and in freq iff in small or main.
        self.small: OrderedDict[str, int] = OrderedDict()
        self.main: OrderedDict[str, int] = OrderedDict()
        self.ghost: OrderedDict[str, int] = OrderedDict()
        self.freq: dict[str, int] = {}
        self._queues = (self.small, self.main, self.ghost)
        self._bytes = [0, 0, 0]

    def find(self, key: str) -> tuple[int, int, int] | None:
        for queue, items in enumerate(self._queues):
            size = items.get(key)
            if size is not None:
                return queue, size, self.freq.get(key, 0)
        return None

    def push(self, queue: int, key: str, size: int, freq: int) -> None:
        self._queues[queue][key] = size
        self._bytes[queue] += size
        if queue != GHOST:
            self.freq[key] = freq

    def oldest(self, queue: int) -> tuple[str, int, int] | None:
        items = self._queues[queue]
        if not items:
            return None
        key, size = items.popitem(last=False)
        self._bytes[queue] -= size
        return key, size, self.freq.pop(key, 0)

    def drop(self, key: str) -> None:
        for queue, items in enumerate(self._queues):
            size = items.pop(key, None)
            if size is not None:
                self._bytes[queue] -= size
                self.freq.pop(key, None)
                return

    def bump(self, key: str) -> None:
        freq = self.freq.get(key)
        if freq is not None and freq < MAX_FREQ:
            self.freq[key] = freq + 1

    def count(self, queue: int) -> int:
        return len(self._queues[queue])

    def bytes(self, queue: int) -> int:
        return self._bytes[queue]


class S3FIFOPolicy:
    """A small FIFO filters one-hit wonders; a main FIFO with second chances keeps what is reused; a ghost FIFO of
    keys recently dropped from small sends a quick return straight to main.

    A hit only bumps a capped counter (no list moves), which keeps touch() cheap on the hot path; the queues are
    reordered only at eviction time, amortised O(1) because every reinsertion spends one unit of a counter.
    The state lives in `queues` (dicts by default; the disk tier's SQLite index, storage.diskindex).
    """

    def __init__(
        self,
        budget: int,
        max_item_fraction: float = 1 / 8,
        small_fraction: float = 0.1,
        queues: Queues | None = None,
    ) -> None:
        if not 0 < small_fraction < 1:
            raise ValueError(f"small_fraction must be in (0, 1), got {small_fraction}")
        self.max_item = _max_item(budget, max_item_fraction)
        self.budget = budget
        self.small_fraction = small_fraction
        self.small_budget = max(1, int(budget * small_fraction))
        self.queues: Queues = queues if queues is not None else MemoryQueues()

    @property
    def used_bytes(self) -> int:
        return self.queues.bytes(SMALL) + self.queues.bytes(MAIN)

    @property
    def small_bytes(self) -> int:
        return self.queues.bytes(SMALL)

    def admit(self, key: str, size: int, lent: bool = False) -> list[str]:
        """`lent`: a key this tier gave up to the memory tier on a hit (exclusive tiers, storage.tiers), which
        memory evicts now. It goes to main with a full counter: it was used again here, and held in memory since.
        Admitted as new instead (its small FIFO, no count), exclusive tiers ended 6 points lower at 1 + 8 GiB,
        5 under inclusive ones (loadtest/README.md "Inclusive or exclusive tiers"); its exact counter carried
        back gained 0.01-0.05 over a full one."""
        q = self.queues
        found = q.find(key)
        # A replaced value keeps its queue and counter: refreshing a hot slice must not send it back on probation.
        # A ghost entry is used up here (read before evicting: this admit's own evictions may push it out).
        queue, _, freq = found if found is not None else (SMALL, 0, 0)
        if found is not None and queue != GHOST:
            q.drop(key)
        if size > self.max_item:
            return [key]
        if queue == GHOST:
            q.drop(key)
        evicted = self._make_room(size)
        if lent:
            q.push(MAIN, key, size, MAX_FREQ)
        else:
            q.push(MAIN if queue in (MAIN, GHOST) else SMALL, key, size, freq if queue != GHOST else 0)
        return evicted

    def resize(self, budget: int) -> list[str]:
        """A new budget (the largest item stays as it was); the keys dropped to fit it, in eviction order."""
        self.budget = budget
        self.small_budget = max(1, int(budget * self.small_fraction))
        return self._make_room(0)

    def _make_room(self, size: int) -> list[str]:
        evicted: list[str] = []
        while self.used_bytes + size > self.budget and (self.queues.count(SMALL) or self.queues.count(MAIN)):
            self._evict_one(evicted)
        return evicted

    def _evict_one(self, evicted: list[str]) -> None:
        """One step of eviction: may free an item, or only move one (promotion, second chance)."""
        q = self.queues
        if q.count(SMALL) and (q.bytes(SMALL) >= self.small_budget or not q.count(MAIN)):
            self._evict_small(evicted)
        else:
            self._evict_main(evicted)

    def _evict_small(self, evicted: list[str]) -> None:
        q = self.queues
        oldest = q.oldest(SMALL)
        assert oldest is not None
        key, size, freq = oldest
        if freq > 0:
            q.push(MAIN, key, size, 0)  # reused while on probation: promoted, and must earn its second chances
            return
        evicted.append(key)
        q.push(GHOST, key, 0, 0)
        limit = max(q.count(MAIN), GHOST_FLOOR)
        while q.count(GHOST) > limit:
            q.oldest(GHOST)

    def _evict_main(self, evicted: list[str]) -> None:
        oldest = self.queues.oldest(MAIN)
        assert oldest is not None
        key, size, freq = oldest
        if freq > 0:
            self.queues.push(MAIN, key, size, freq - 1)  # second chance: back to the newest end of the FIFO
            return
        evicted.append(key)

    def touch(self, key: str) -> None:
        self.queues.bump(key)

    def remove(self, key: str) -> None:
        found = self.queues.find(key)
        if found is not None and found[0] != GHOST:
            self.queues.drop(key)

    def hottest(self) -> list[str]:
        """Every key held (dict queues only: the memory tier's), in the reverse of the order evicting them all
        would take (resize(0)): main's by counter (second chances left), then small's that were reused (each
        would be promoted to main's newest end), then main's with none left, then small's one-hit wonders; within
        each, the newest end of its FIFO first. O(n log n): for a stop, not the hot path."""
        main, small = enumerate(self._counted(MAIN)), enumerate(self._counted(SMALL))
        ranked = [(2, f, place, key) if f else (1, 0, place, key) for place, (key, f) in main]
        ranked += [(1, 1, place, key) if f else (0, 0, place, key) for place, (key, f) in small]
        ranked.sort(reverse=True)
        return [key for *_, key in ranked]

    def _counted(self, queue: int) -> list[tuple[str, int]]:
        q = self._mem
        return [(key, q.freq.get(key, 0)) for key in (q.main if queue == MAIN else q.small)]

    def in_main(self, key: str) -> bool:
        found = self.queues.find(key)
        return found is not None and found[0] == MAIN

    def in_ghost(self, key: str) -> bool:
        found = self.queues.find(key)
        return found is not None and found[0] == GHOST

    # The dict state, for tests and tools that look inside (only with the default MemoryQueues).
    @property
    def _mem(self) -> MemoryQueues:
        assert isinstance(self.queues, MemoryQueues)
        return self.queues

    @property
    def _small(self) -> OrderedDict[str, int]:
        return self._mem.small

    @property
    def _main(self) -> OrderedDict[str, int]:
        return self._mem.main

    @property
    def _ghost(self) -> OrderedDict[str, int]:
        return self._mem.ghost

    @property
    def _freq(self) -> dict[str, int]:
        return self._mem.freq

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        found = self.queues.find(key)
        return found is not None and found[0] != GHOST

    def __len__(self) -> int:
        return self.queues.count(SMALL) + self.queues.count(MAIN)


# The disk's small FIFO: 5% of the budget. Measured with loadtest/efficiency.py, 10% (the memory tier's) lost
# 0.1-0.4 points of overall byte hit ratio, and 20-50% lost 0.3-2.6.
DISK_SMALL_FRACTION = 0.05


class DiskPolicy(S3FIFOPolicy):
    """S3-FIFO with the disk's proportions: what the disk tier runs over its SQLite index (storage.diskindex),
    and what the replays and the simulator run in dicts (the default `queues`).

    Any item up to the whole budget is admitted, as diskcache stored any value before.
    """

    def __init__(self, budget: int, queues: Queues | None = None) -> None:
        super().__init__(budget, max_item_fraction=1.0, small_fraction=DISK_SMALL_FRACTION, queues=queues)


def make_policy(name: str, budget: int, max_item_fraction: float = 1 / 8) -> EvictionPolicy:
    if name == "lru":
        return LRUPolicy(budget, max_item_fraction)
    if name == "s3fifo":
        return S3FIFOPolicy(budget, max_item_fraction)
    raise ValueError(f"unknown memory policy {name!r} (expected 's3fifo' or 'lru')")
