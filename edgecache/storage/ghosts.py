"""What this process stored and then dropped to make room: the ghosts behind the misses' "evicted" cause.

A miss is "evicted" only for what the node held: a slice name a tier evicted, or an object some of whose slices
were evicted. A slice never fetched (another range of an object partly stored) is no ghost, so it stays "cold".
Fed by the memory tier's eviction callback (MemoryTier.on_evict): every slice a fill stores goes through the
memory tier, so a slice missing from both tiers that the memory tier once evicted was stored and is gone. The
disk tier may tell it too (add()), where its culls can be seen. Bounded: the oldest ghosts are forgotten first,
and what was forgotten is counted cold, never the other way round.
"""

from __future__ import annotations

GHOSTS = 16_384  # names remembered; a slice name and its object's are a few hundred bytes together


class Ghosts:
    def __init__(self, most: int = GHOSTS) -> None:
        self.most = most
        self._names: dict[str, None] = {}  # insertion ordered: the oldest first

    def add(self, name: str) -> None:
        """`name` (a slice name, storage.store.slice_name) was dropped to make room."""
        if not name.startswith("s:"):
            return  # not a slice (no other values live in the tiers' budgets)
        self._remember(name)
        self._remember(_object_of(name))

    def _remember(self, key: str) -> None:
        self._names.pop(key, None)
        self._names[key] = None
        while len(self._names) > self.most:
            del self._names[next(iter(self._names))]

    def slice_dropped(self, name: str) -> bool:
        return name in self._names

    def object_dropped(self, object_name: str) -> bool:
        """Was a slice of this object (its digest, as slice names carry it) dropped?"""
        return f"o:{object_name}" in self._names

    def __len__(self) -> int:
        return len(self._names)


def _object_of(name: str) -> str:
    # s:<digest of the entry key>:<version>:<index>
    return "o:" + name.split(":", 2)[1]
