"""`edgecache simulate`'s default disk model is the disk tier's own policy (storage.policy.DiskPolicy, the class
DiskTier runs over its index), not the least-recently-stored FIFO the disk tier had before that index."""

from __future__ import annotations

import json

from edgecache import simulate
from edgecache.simulate import Budget, replay
from edgecache.storage.policy import DiskPolicy

K = 4096


def line(path: str) -> bytes:
    record = {"site": "s", "method": "GET", "host": "h.test", "path": path, "range": None, "status": 200}
    return json.dumps({**record, "bytes": K}).encode()


def run(paths: list[str], disk_policy: str) -> simulate.Tiers:
    # No memory tier (its largest item is an eighth of 0): every read reaches the disk model, of two slices.
    lines = [line(p) for p in paths]
    result = replay(lines, [Budget(0, 2 * K)], K, simulate.memory_policy("lru"), simulate.DISK_POLICIES[disk_policy])
    (tiers,) = result.runs
    return tiers


def test_the_default_disk_model_is_the_disk_tiers_policy() -> None:
    assert simulate.DEFAULT_DISK_POLICY == "node"
    assert type(simulate.DISK_POLICIES["node"](2 * K)) is DiskPolicy


def test_a_slice_back_from_the_ghost_outlives_one_hit_slices_where_the_fifo_drops_it() -> None:
    paths = ["/a", "/b", "/c", "/a", "/d", "/e", "/a"]
    node = run(paths, simulate.DEFAULT_DISK_POLICY)
    # c evicts a from the small FIFO to the ghost; a back from the ghost goes to main, and b, c, d leave the small
    # FIFO in turn, each asked once: the last a is a hit.
    assert (node.requests, node.hits, node.hit_bytes, node.origin_bytes) == (7, 1, K, 6 * K)
    assert "s|h.test|/a#0" in node.disk
    assert isinstance(node.disk, DiskPolicy)
    assert node.disk.in_main("s|h.test|/a#0")
    # First stored, first evicted: a goes for c, again for e, and is never a hit.
    fifo = run(paths, "fifo")
    assert (fifo.requests, fifo.hits, fifo.hit_bytes, fifo.origin_bytes) == (7, 0, 0, 7 * K)
