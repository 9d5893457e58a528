"""The eviction ghosts behind the "evicted" miss cause: fed by the memory tier, bounded, slice and object names."""

from __future__ import annotations

from edgecache.core.keys import digest
from edgecache.storage.ghosts import Ghosts
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import slice_name


def test_the_memory_tier_tells_each_eviction_and_nothing_else() -> None:
    told: list[str] = []
    tier = MemoryTier(400, "lru", max_item_fraction=1)
    tier.on_evict = told.append
    for k in "abcd":
        tier.put(k, b"x" * 100)
    tier.put("a", b"y" * 100)  # a replacement: no eviction
    tier.delete("b")  # a delete: no eviction
    assert told == []
    tier.put("e", b"x" * 200)  # room made: the least recently used goes
    assert told == ["c"]
    tier.set_limit(200)  # the RSS bound shrinks it: evictions too
    assert told == ["c", "d", "a"]
    assert tier.stats().evictions == 3


def test_a_dropped_slice_names_itself_and_its_object_only() -> None:
    ghosts = Ghosts()
    name = slice_name("videos|h|/a", "v1", 3)
    ghosts.add(name)
    assert ghosts.slice_dropped(name)
    assert not ghosts.slice_dropped(slice_name("videos|h|/a", "v1", 4))  # never stored: not a ghost
    assert ghosts.object_dropped(digest("videos|h|/a"))
    assert not ghosts.object_dropped(digest("videos|h|/b"))
    ghosts.add("m:not-a-slice")
    assert len(ghosts) == 2


def test_ghosts_are_bounded_and_forget_the_oldest_first() -> None:
    ghosts = Ghosts(most=10)
    names = [slice_name("videos|h|/o", "v", i) for i in range(20)]
    for name in names:
        ghosts.add(name)
        assert len(ghosts) <= 10
    assert len(ghosts) == 10
    assert [ghosts.slice_dropped(n) for n in names] == [False] * 11 + [True] * 9
    assert ghosts.object_dropped(digest("videos|h|/o"))  # refreshed by every slice of it
