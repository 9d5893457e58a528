"""The memory tier: hot slices in this process, never more than its byte budget. O(1) on the hot path.

Runs on the event loop and never awaits, so it needs no lock: every method runs to completion before any other
coroutine can look at the tier. The policy decides what to keep; this class only holds the values and counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecache.storage.policy import EvictionPolicy, make_policy

LIMIT_FLOOR = 0.5  # the RSS bound never takes the memory tier below this share of its budget
# What an entry costs beyond its value's bytes: its key (a slice name, about 100 bytes as a str), the value's
# bytes object header, and its slots in the tier's dict and the policy's queues (measured: about 310 bytes in
# all). Counted with each value, so many small objects cannot hold many times the budget.
ENTRY_OVERHEAD = 320


def rss_slack(budget: int) -> int:
    """How far under its RSS limit a worker must be before the bound gives memory back (no flapping at the line)."""
    return budget // 16


def next_limit(budget: int, limit: int, rss: int, rss_limit: int, floor: float = LIMIT_FLOOR) -> int:
    """The memory tier's next limit, from the process's RSS: over `rss_limit`, give up the excess (never below
    `floor` of the budget); comfortably under it (by 1/16 of the budget), take back what is free, up to the budget.

    The tier's budget counts only slices; the rest of the process (interpreter, metadata, buffers in flight,
    memory the allocator keeps) varies with the load. This keeps the whole process within its limit.
    """
    lowest = int(budget * floor)
    if rss > rss_limit:
        return max(lowest, limit - (rss - rss_limit))
    slack = rss_slack(budget)
    if rss < rss_limit - slack:
        return min(budget, limit + (rss_limit - slack - rss))
    return limit


def next_entries(entries: int, most: int, rss: int, rss_limit: int, slack: int, tier: tuple[bool, bool]) -> int:
    """How many metadata entries a worker keeps at hand, next; `tier` is (at its floor, at its full budget).

    The memory tier gives way first: only once it is at its floor and RSS is still over `rss_limit` does the
    metadata shrink, a quarter at a time, never under most/16 (each entry is a few KiB with its headers, and a
    worker with many objects held 16,384). It grows back, a quarter at a time up to `most`, once the tier has all
    of its budget back and RSS is comfortably (by `slack`) under the limit."""
    at_floor, full = tier
    if rss > rss_limit and at_floor:
        return max(most // 16, entries * 3 // 4)
    if full and rss < rss_limit - slack:
        return min(most, entries + max(1, entries // 4))
    return entries


@dataclass(frozen=True, slots=True)
class MemoryStats:
    used_bytes: int
    budget_bytes: int
    objects: int
    hits: int
    misses: int
    evictions: int  # values dropped to make room (not deletes, not replacements)
    admissions: int
    rejections: int  # puts refused: the value is over the tier's largest item size


class MemoryTier:
    def __init__(
        self, budget_bytes: int, policy: str = "s3fifo", *, max_item_fraction: float = 1 / 8, entry_overhead: int = 0
    ) -> None:
        """`entry_overhead`: bytes counted for each value besides its length (ENTRY_OVERHEAD for a node's tier)."""
        self.budget_bytes = budget_bytes
        self._overhead = entry_overhead
        self._policy_name = policy
        self._max_item_fraction = max_item_fraction
        self._policy = self._new_policy()
        # Same keys as the policy at all times; the policy's used_bytes is the sum of these lengths (each with the
        # entry overhead).
        self._values: dict[str, bytes] = {}
        self.hits = self.misses = self.evictions = self.admissions = self.rejections = 0
        # Told the key of each value evicted to make room (not deletes, not replacements): what the node stored
        # and then dropped, for the misses' "evicted" cause (storage.ghosts).
        self.on_evict: Callable[[str], None] | None = None
        # Given each value evicted to make room, with its key (exclusive tiers write it to disk: storage.tiers).
        self.on_drop: Callable[[str, bytes], None] | None = None
        # Asked before each eviction a lower limit makes: False holds the tier where it is (it takes nothing more)
        # until shrink() is called again. Exclusive tiers: is there room in the write-back for one more slice? A
        # shrink of the RSS bound evicting past it dropped slices that were then fetched again from origin.
        self.room: Callable[[], bool] | None = None
        self._target = budget_bytes  # the limit last set: the tier goes down to it as room allows
        self._held_at: int | None = None  # where the last set_limit's shrink stopped short of its limit, if it did

    def _new_policy(self) -> EvictionPolicy:
        """The policy, its largest item raised by the entry overhead: a value as large as the fraction allows still
        fits with it (never past the budget)."""
        policy = make_policy(self._policy_name, self.budget_bytes, self._max_item_fraction)
        policy.max_item = min(self.budget_bytes, policy.max_item + self._overhead)
        return policy

    def get(self, key: str) -> bytes | None:
        value = self._values.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._policy.touch(key)
        return value

    def put(self, key: str, value: bytes) -> bool:
        """Store `value` under `key`; False if refused. A refused replacement drops the old value too: the caller
        meant to replace it, so serving the old bytes afterwards would be wrong."""
        self._values.pop(key, None)
        dropped = self._policy.admit(key, len(value) + self._overhead)
        stored = True
        for k in dropped:
            if k == key:
                stored = False
            else:
                self._evicted(k)
        if not stored:
            self.rejections += 1
            return False
        self._values[key] = value
        self.admissions += 1
        return True

    @property
    def max_item(self) -> int:
        """The largest value the tier takes (its overhead included)."""
        return self._policy.max_item

    @property
    def limit(self) -> int:
        """What the tier holds at most right now: the budget, or less while the process is over its RSS limit."""
        return self._policy.budget

    def set_limit(self, limit: int) -> int:
        """Hold at most `limit` bytes (clamped to 0..budget), evicting what no longer fits as far as `room` allows
        now (shrink); the limit set. Called once a round by the RSS bound: if the tier has not moved since the
        last call stopped it short, `room` is not asked this time (a stalled disk must not keep the worker over
        its RSS limit: what the write-back cannot take is dropped, as before there was a `room`)."""
        stuck = self._held_at is not None and self._held_at == self._policy.budget
        self._target = max(0, min(limit, self.budget_bytes))
        self.shrink(force=stuck)
        self._held_at = self._policy.budget if self._policy.budget > self._target else None
        return self._target

    def shrink(self, force: bool = False) -> None:
        """Toward the limit last set: one eviction at a time while `room` says yes (or `force`); where it says no,
        the tier's limit stays at what it holds (no growth) until the next call. Growing back takes no eviction."""
        while self._policy.budget != self._target:
            used = self._policy.used_bytes
            if self._target >= used:
                step = self._target
            elif not force and self.room is not None and not self.room():
                step = used
            elif self.room is None:  # nothing to ask: down to the limit in one resize
                step = self._target
            else:
                step = max(self._target, used - 1)  # a budget one byte under what it holds: one value evicted
            for k in self._policy.resize(step):
                self._evicted(k)
            if step == used:
                return

    def _evicted(self, key: str) -> None:
        value = self._values.pop(key)
        if self.on_drop is not None:
            self.on_drop(key, value)
        self.evictions += 1
        if self.on_evict is not None:
            self.on_evict(key)

    def delete(self, key: str) -> None:
        if self._values.pop(key, None) is not None:
            self._policy.remove(key)

    def delete_where(self, pred: Callable[[str], bool]) -> int:
        """Delete every key for which `pred` is true (purges by prefix); O(n), so not for the hot path."""
        doomed = [k for k in self._values if pred(k)]
        for k in doomed:
            self.delete(k)
        return len(doomed)

    def clear(self) -> None:
        # A fresh policy also forgets the ghost: after a clear nothing should count as "seen recently".
        self._values.clear()
        limit = self.limit  # a limit set while the worker is over its RSS bound outlives the clear
        self._policy = self._new_policy()
        self._policy.resize(limit)

    def hottest(self) -> list[tuple[str, bytes]]:
        """Every value held, with its key, the one the policy would evict last first (no touch: not a hit)."""
        return [(key, self._values[key]) for key in self._policy.hottest()]

    def stats(self) -> MemoryStats:
        return MemoryStats(
            used_bytes=self._policy.used_bytes,
            budget_bytes=self.budget_bytes,
            objects=len(self._values),
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            admissions=self.admissions,
            rejections=self.rejections,
        )

    def __contains__(self, key: object) -> bool:
        # No touch: a presence check (which slices are missing?) is not a hit.
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
