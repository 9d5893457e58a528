"""A reader holding a fill reads a slice the fill brought even where memory alone held it and memory has dropped it
since (exclusive tiers). The e2e fuzz (mode excl) answered 502 "slice N could not be read" about once in 26,000
answers: a fill's slice that memory kept was let go by the fill as stored when the fill ended; a purge came, memory
evicted the slice, and its spill was judged stale (not its object's current copy: right, nobody new may find it),
so it was in no tier. The fill's reader, still to read it (a slow client), found it nowhere and fetched it again
under its own key, of the purged generation, so each new fill's slice was stale in turn: three times, then 502.
Inclusive tiers wrote each of those slices to disk, where the reader found it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edgecache.cluster.purgesync import apply_entry
from edgecache.core.entry import ObjectMeta
from edgecache.core.purge import Entry
from edgecache.proxy import reading
from edgecache.proxy.fill import Fill
from tests.conftest import Edge
from tests.e2e.test_exclusive_tiers import SLICE, exclusive_edge, settled, spills
from tests.e2e.test_released_copy import fills_started
from tests.origin import Origin

BODY = os.urandom(2 * SLICE)
OTHERS = {f"/x{n}": os.urandom(2 * SLICE) for n in range(12)}


@pytest.mark.parametrize(("tiers", "kind"), [("exclusive", "site"), ("exclusive", "url"), ("inclusive", "site")])
async def test_a_reader_holding_a_fill_reads_its_slice_after_memory_dropped_it_as_stale(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiers: str, kind: str
) -> None:
    """A site's purge gives the reader's key, of the old scope, fills stored under it, each spilled stale: before,
    502 "slice 1 could not be read" after three fetches. A URL's gives it a new generation: its second fill, not
    stored, raised VersionChanged (the answer started again, or cut). Inclusive tiers: on disk, as ever."""
    stale = spills("stale")
    async with exclusive_edge(origin, tmp_path, False, tiers) as edge:
        engine, store = edge.node.engine, edge.node.store
        origin.put("/r", BODY)
        for path, body in OTHERS.items():
            origin.put(path, body)
        asked = fills_started(engine, monkeypatch)
        status, _, body = await edge.get("/r", Range="bytes=0-99")  # the copy's metadata and slice 0 alone
        assert (status, body) == (206, BODY[:100])
        await settled(edge)
        (req,) = asked
        meta = store.peek_meta(req.entry_key)
        assert isinstance(meta, ObjectMeta)
        monkeypatch.setattr(reading, "_from_fill", purged_then_read(edge, kind))
        got = b"".join([bytes(c) async for c in reading.read_slice(engine, req, meta, 1, 0, 100, 1)])
        assert got == BODY[SLICE : SLICE + 100]
        assert spills("stale") - stale >= (tiers == "exclusive")  # memory did drop it to nowhere
    assert origin.range_hits("/r") == [f"bytes=0-{SLICE - 1}", f"bytes={SLICE}-{2 * SLICE - 1}"]


def purged_then_read(edge: Edge, kind: str) -> Callable[..., AsyncIterator[bytes | memoryview]]:
    """A reader that comes to its fill once the fill has ended (its slice kept by memory alone, let go), the object
    has been purged, and memory has evicted the slice (4 objects of 2 slices fill the LRU tier of 8): its spill is
    stale, written nowhere. Before each read of /r, as on a loop loaded with slow clients."""
    from_fill = reading._from_fill
    fresh = iter(OTHERS)

    async def late(fill: Fill, meta: ObjectMeta, index: int, lo: int, hi: int) -> AsyncIterator[bytes | memoryview]:
        if "|/r" not in fill.entry_key:  # the other objects' readers read as ever
            async for chunk in from_fill(fill, meta, index, lo, hi):
                yield chunk
            return
        await asyncio.gather(*edge.node.engine._tasks)
        host, path = ("video.test", "/r") if kind == "url" else ("", "")
        entry = Entry("test~1", 1, kind, "videos", host, path)
        assert await apply_entry(edge.node.store, edge.node.config.sites, entry, 0.0, numbered=False)
        for path in [next(fresh) for _ in range(4)]:
            status, _, body = await edge.get(path)
            assert (status, body) == (200, OTHERS[path])
        await settled(edge)
        async for chunk in from_fill(fill, meta, index, lo, hi):
            yield chunk

    return late
