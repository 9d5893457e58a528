"""A bounded table of remembered decisions that keeps the ones still asked for.

Two generations of at most `size` entries each. A lookup finds an entry in either; one found in the older is
moved to the newer. An entry is added to the newer; once that holds `size`, the older is dropped and the newer
becomes the older. So an entry asked at least once in every `size` additions stays, whatever else comes and goes
(a scan of keys asked once costs only what it adds), and the table never holds more than twice `size`: where a
table cleared when full dropped its most asked entries with the rest, and decided each of them again.

Pure: plain dicts, no clock.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    __slots__ = ("new", "old", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a memo holds at least one entry")
        self.size = size
        self.new: dict[K, V] = {}
        self.old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self.new.get(key)
        if value is None and self.old:
            value = self.old.pop(key, None)
            if value is not None:
                self[key] = value
        return value

    def __setitem__(self, key: K, value: V) -> None:
        new = self.new
        if key not in new and len(new) >= self.size:
            self.old, self.new = new, {}
            new = self.new
        new[key] = value
        self.old.pop(key, None)

    def __delitem__(self, key: K) -> None:
        """Forget `key`, wherever it is (a KeyError if nowhere, as a dict's)."""
        found = self.new.pop(key, None) is not None
        if self.old.pop(key, None) is None and not found:
            raise KeyError(key)

    def __len__(self) -> int:
        return len(self.new) + len(self.old)

    def clear(self) -> None:
        self.new.clear()
        self.old.clear()
