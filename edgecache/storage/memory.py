"""The memory tier: hot slices in this process, never more than its byte budget. O(1) on the hot path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecache.storage.policy import make_policy


@dataclass(frozen=True, slots=True)
class MemoryStats:
    used_bytes: int
    budget_bytes: int
    objects: int
    hits: int
    misses: int
    evictions: int
    admissions: int
    rejections: int


class MemoryTier:
    def __init__(self, budget_bytes: int, policy: str = "s3fifo") -> None:
        self.budget_bytes = budget_bytes
        self._policy = make_policy(policy, budget_bytes)
        self._values: dict[str, bytes] = {}
        self.hits = self.misses = self.evictions = self.admissions = self.rejections = 0

    def get(self, key: str) -> bytes | None:
        value = self._values.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._policy.touch(key)
        return value

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def put(self, key: str, value: bytes) -> bool:
        self._values.pop(key, None)
        dropped = self._policy.admit(key, len(value))
        for k in dropped:
            if k != key:
                self._values.pop(k, None)
                self.evictions += 1
        if key in dropped:
            self.rejections += 1
            return False
        self._values[key] = value
        self.admissions += 1
        return True

    def delete(self, key: str) -> None:
        if self._values.pop(key, None) is not None:
            self._policy.remove(key)

    def delete_where(self, pred: Callable[[str], bool]) -> int:
        doomed = [k for k in self._values if pred(k)]
        for k in doomed:
            self.delete(k)
        return len(doomed)

    def clear(self) -> None:
        for k in list(self._values):
            self.delete(k)

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
