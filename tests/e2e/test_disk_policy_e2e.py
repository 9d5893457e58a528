"""Through the real edge: a scan of objects seen once does not push a hot object out of the disk tier.

The memory tier is too small to take a slice (its largest item is an eighth of it), so every hit is a disk hit
and the disk tier alone decides what stays. Its budget is 16 slices; the scan brings 40.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.storage.disk import DiskTier
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin

SLICE = 64 * 1024
BODY = SLICE - 1000  # one slice per object, whatever the headers


_PATTERN = bytes(range(256)) * (BODY // 256 + 2)


async def settled(edge: Edge) -> None:
    """Until every fill started so far has ended with its slices written (so a hit after it is a disk hit)."""
    await asyncio.gather(*edge.node.engine._tasks)
    await edge.node.engine.flush()


def _body(n: int) -> bytes:
    return _PATTERN[n : n + BODY]  # a different byte at every offset for each object


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_scan_does_not_evict_a_hot_object(origin: Origin, tmp_path: Path, fast_path: bool) -> None:
    origin.put("/hot", _body(0))
    for n in range(1, 41):
        origin.put(f"/scan{n}", _body(n))
    config = make_config(tmp_path / "cache", [origin.url], memory_bytes=SLICE, disk_bytes=16 * SLICE, slice_bytes=SLICE)
    async with start_edge(replace(config, fast_path=fast_path)) as edge:
        for _ in range(4):  # one fill, then disk hits
            status, _, body = await edge.get("/hot")
            assert (status, body) == (200, _body(0))
            await settled(edge)
        tier = edge.node.store.disk._slots[0].tier
        assert isinstance(tier, DiskTier)
        await tier.flush_hits()  # what the timer does each second
        for n in range(1, 41):
            status, _, body = await edge.get(f"/scan{n}")
            assert (status, body) == (200, _body(n))
            await settled(edge)
        status, _, body = await edge.get("/hot")
        assert (status, body) == (200, _body(0))
    assert origin.hits["/hot"] == 1
    assert all(origin.hits[f"/scan{n}"] == 1 for n in range(1, 41))
