"""Two readers of a slice that is in neither tier: the second looks at the disk while the first's fill runs to its
end. That fill is then in no table of fills, and the slice is stored: it is read as stored, never fetched again
(proxy.reading._start_for). loadtest/versus_nginx.py at a tiny scale fetched a slice twice in about one run in
three, with everything within the budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from edgecache.core.entry import ObjectMeta
from tests.conftest import Edge
from tests.origin import Origin

MiB = 2**20
DATA = bytes((i * 13 + i // 7919) % 256 for i in range(3 * MiB))
SLICE_1 = f"bytes={MiB}-{MiB + 99}"
T = TypeVar("T")


async def test_a_slice_a_fill_stored_while_the_second_reader_looked_at_the_disk_is_fetched_once(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/v", DATA)
    status, _, body = await edge.get("/v", Range="bytes=0-99")  # the object's metadata and slice 0
    assert (status, body) == (206, DATA[:100])
    assert origin.range_hits("/v") == [f"bytes=0-{MiB - 1}"]
    store = edge.node.store
    both_looked, first_answered = asyncio.Event(), asyncio.Event()
    calls = 0

    def both_look_first(looked: Callable[[str, ObjectMeta, int], Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """The disk look of a reader (the full handler's read, the fast path's open): both readers find slice 1 on
        disk no more than they did in memory or in the table of fills; the second learns it only once the first
        has its answer and its fill has ended (it stored the slice and left the table of fills)."""

        async def look(entry_key: str, meta: ObjectMeta, index: int) -> T:
            found = await looked(entry_key, meta, index)
            await interleave(index)
            return found

        return look

    async def interleave(index: int) -> None:
        nonlocal calls
        if index == 1:
            calls += 1
            if calls == 1:
                await both_looked.wait()
            else:
                both_looked.set()
                await first_answered.wait()
                fills = list(edge.node.engine._tasks)  # and the first's fill has ended: in no table of fills
                if fills:
                    await asyncio.wait(fills)

    monkeypatch.setattr(store, "slice_from_disk", both_look_first(store.slice_from_disk))
    monkeypatch.setattr(store, "open_slice", both_look_first(store.open_slice))

    async def ask() -> tuple[int, bytes]:
        status, _, body = await edge.get("/v", Range=SLICE_1)
        first_answered.set()
        return status, body

    async with asyncio.timeout(20):
        answers = await asyncio.gather(ask(), ask())
    assert answers == [(206, DATA[MiB : MiB + 100])] * 2
    assert calls == 2
    assert origin.range_hits("/v") == [f"bytes=0-{MiB - 1}", f"bytes={MiB}-{2 * MiB - 1}"]


async def test_a_run_stops_before_a_slice_a_fill_stored_while_the_reader_looked_at_the_disk(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of slices 1 to 3 starts a run from slice 1, up to the first slice that is stored or being fetched,
    as the disk says after a look there (Store.missing). A fill of slice 2 that ends while it looks has stored the
    slice and left the table of fills: the run stops before it, never fetching it again."""
    data = DATA + DATA[:MiB]  # four slices
    origin.put("/v", data)
    assert (await edge.get("/v", Range="bytes=0-99"))[::2] == (206, DATA[:100])  # its metadata and slice 0
    store, engine = edge.node.store, edge.node.engine
    looked = store.missing

    async def missing(entry_key: str, meta: ObjectMeta, indices: list[int]) -> list[int]:
        found = await looked(entry_key, meta, indices)
        if indices == [2, 3]:  # the second reader's look: the first reader's fill of slice 2 ends meanwhile
            assert origin.gate is not None
            origin.gate.set()
            await asyncio.wait(list(engine._tasks))
        return found

    monkeypatch.setattr(store, "missing", missing)
    origin.gate = asyncio.Event()
    first = asyncio.ensure_future(edge.get("/v", Range=f"bytes={2 * MiB}-{2 * MiB + 99}"))
    await origin.wait_for_requests(2)  # its fill of slice 2 is under way, its answer held
    async with asyncio.timeout(20):
        status, _, body = await edge.get("/v", Range=f"bytes={MiB}-{3 * MiB + 99}")
        assert (status, body) == (206, data[MiB : 3 * MiB + 100])
        assert (await first)[::2] == (206, data[2 * MiB : 2 * MiB + 100])
    fetched = [f"bytes=0-{MiB - 1}", f"bytes={2 * MiB}-{3 * MiB - 1}", f"bytes={MiB}-{2 * MiB - 1}"]
    assert origin.range_hits("/v") == [*fetched, f"bytes={3 * MiB}-{4 * MiB - 1}"]  # each slice once
