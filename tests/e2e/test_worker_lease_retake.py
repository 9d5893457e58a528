"""A slice a fill of this worker stored while a reader of it was taking its lease is read, not fetched again.

With several workers a reader that finds a slice in neither tier nor in its worker's table of fills leases it on
the shared disk before fetching it (reading._start_for). A lease this worker holds is taken again (its fills
coordinate through the table: storage.disk.lease), so the take proves nothing about this worker's own fills: one
that ran to its end during the take's await had left the table, its slice in memory and on its way to disk, and
the reader fetched the slice a second time (seen once in a fresh CI run: test_workers' 24 overlapping ranges
fetched slice 8 twice).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core.entry import ObjectMeta
from edgecache.storage.disk import lease_name
from edgecache.storage.store import Store, slice_name
from tests.conftest import make_config, start_edge
from tests.e2e.test_exclusive_tiers import settled
from tests.e2e.test_released_copy import fills_started
from tests.origin import Origin

MiB = 2**20
DATA = bytes((i * 11 + i // 769) % 256 for i in range(4 * MiB + 55))


def held_in_its_lease(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The next lease_run takes its leases, then waits (`taken` is set) for `go`; those after it run as they are."""
    lease_run, taken, go = store.lease_run, asyncio.Event(), asyncio.Event()

    async def held(entry_key: str, meta: ObjectMeta, indices: list[int], seconds: float) -> int:
        leased = await lease_run(entry_key, meta, indices, seconds)
        if not taken.is_set():
            taken.set()
            await go.wait()
        return leased

    monkeypatch.setattr(store, "lease_run", held)
    return taken, go


@pytest.mark.parametrize(
    ("late", "early"),
    [
        ((2 * MiB + 10, 2 * MiB + 109), (2 * MiB, 2 * MiB + 9)),  # the same slice
        ((MiB + 10, 2 * MiB + 109), (2 * MiB, 2 * MiB + 9)),  # a run of two: its second slice
    ],
    ids=["its-slice", "its-runs-last-slice"],
)
async def test_a_slice_stored_during_the_readers_lease_is_read_not_fetched_again(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late: tuple[int, int], early: tuple[int, int]
) -> None:
    """The `late` reader takes its leases and is held there; the `early` one (same worker: the leases are taken
    again) fetches slice 2 and ends, its fill stored. The late one, let go, reads slice 2 from memory: each slice is
    fetched once, the answers are exact, and no lease is left held (nobody would let it go: the other workers would
    wait the lease's time for it)."""
    origin.put("/r.bin", DATA)
    config = replace(make_config(tmp_path / "cache", [origin.url], fill_slices=2), workers=2)
    async with start_edge(config) as edge:
        store = edge.node.store
        asked = fills_started(edge.node.engine, monkeypatch)
        status, _, body = await edge.get("/r.bin", Range="bytes=0-99")  # the metadata, and slice 0
        assert (status, body) == (206, DATA[:100])
        (req,) = asked
        meta = store.peek_meta(req.entry_key)
        assert isinstance(meta, ObjectMeta)
        seen = len(origin.seen)
        taken, go = held_in_its_lease(store, monkeypatch)
        held = asyncio.ensure_future(edge.get("/r.bin", Range=f"bytes={late[0]}-{late[1]}"))
        try:
            async with asyncio.timeout(10):
                await taken.wait()
                status, _, body = await edge.get("/r.bin", Range=f"bytes={early[0]}-{early[1]}")
                assert (status, body) == (206, DATA[early[0] : early[1] + 1])
                await settled(edge)  # its fill ended, its slice written
        finally:
            go.set()
        async with asyncio.timeout(10):
            status, _, body = await held
        assert (status, body) == (206, DATA[late[0] : late[1] + 1])
        await settled(edge)
        fetched = [x.headers.get("Range") for x in origin.seen[seen:] if x.path == "/r.bin"]
        want = {late[0] // MiB: f"bytes={late[0] // MiB * MiB}-{late[0] // MiB * MiB + MiB - 1}"}
        want[2] = f"bytes={2 * MiB}-{3 * MiB - 1}"
        assert sorted(fetched, key=str) == sorted(want.values())
        names = [lease_name(slice_name(req.entry_key, meta.slice_version, i)) for i in range(4)]
        assert await store.disk.contains(names) == [False] * 4
