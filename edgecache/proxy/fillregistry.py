"""The fills in flight of one worker, by entry key: which one a request may join (a slice's, or the whole object's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.proxy.fill import Fill

if TYPE_CHECKING:
    from edgecache.proxy.fillrequest import FillRequest


class FillRegistry:
    """In-flight fills by (entry key, slice index); a whole-object fill covers every index of its key."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[Fill]] = {}

    def find(self, req: FillRequest, index: int, whole: bool = False) -> Fill | None:
        """The fill of slice `index` of `req`'s entry a request may join (`whole`: of the object to its end): not
        failed, and asked of the origin after any soft purge of the object (one asked before brings its bytes)."""
        for fill in self._by_key.get(req.entry_key, ()):
            whole_if_asked = fill.last_index is None or not whole
            if fill.covers(index) and whole_if_asked and not fill.failed and fill.asked_at >= req.soft_before:
                return fill
        return None

    def add(self, fill: Fill) -> None:
        self._by_key.setdefault(fill.entry_key, []).append(fill)

    def of(self, entry_key: str) -> list[Fill]:
        return self._by_key.get(entry_key, [])

    def remove(self, fill: Fill) -> None:
        fills = self._by_key.get(fill.entry_key)
        if fills and fill in fills:
            fills.remove(fill)
            if not fills:
                del self._by_key[fill.entry_key]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())
