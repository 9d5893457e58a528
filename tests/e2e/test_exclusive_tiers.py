"""cache.tiers = "exclusive" through the real edge: a slice is in memory or on disk, never both (storage.tiers).

The memory tier is an LRU of 8 slices; each object is 2 slices. What memory keeps of a fill is not written to disk;
what it evicts is written then, unless the copy was purged or replaced meanwhile, or the write-back is full; a
disk hit memory takes leaves the disk. Inclusive tiers (the default) write every fill to both, as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.cluster.purgesync import apply_entry
from edgecache.core.purge import Entry
from edgecache.storage.memory import ENTRY_OVERHEAD
from edgecache.storage.policy import MAIN, MAX_FREQ
from edgecache.storage.slicenames import slice_name
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.samples import applied

SLICE = 64 * 1024
BODY = 2 * SLICE  # two slices
BODIES = {f"/o{n}": os.urandom(BODY) for n in range(9)}


def spills(outcome: str) -> float:
    return applied().get_sample_value("edgecache_tier_spills_total", {"outcome": outcome}) or 0.0


@asynccontextmanager
async def exclusive_edge(
    origin: Origin, tmp_path: Path, fast: bool, tiers: str = "exclusive", bound: int = 4 * SLICE
) -> AsyncIterator[Edge]:
    """`bound`: the write-back's, set for the test."""
    for path, body in BODIES.items():
        origin.put(path, body)
    memory = 8 * (SLICE + ENTRY_OVERHEAD)  # 8 slices, the largest item an eighth of it
    config = make_config(tmp_path / "c", [origin.url], memory_bytes=memory, disk_bytes=64 * SLICE, slice_bytes=SLICE)
    config = replace(config, cache=replace(config.cache, memory_policy="lru", tiers=tiers), fast_path=fast)
    async with start_edge(config) as edge:
        if tiers == "exclusive":
            assert edge.node.store.spill_bound == 16 * 2**20  # the floor: an eighth of this tier is one slice
            edge.node.store.spill_bound = bound
        yield edge


async def settled(edge: Edge) -> None:
    """Until every fill, disk write, delete and spill started so far is done."""
    await asyncio.gather(*edge.node.engine._tasks)
    await edge.node.engine.flush()
    await edge.node.store.spilled()


def names(edge: Edge, path: str) -> list[str]:
    meta = edge.node.store.peek_meta(entry_key(edge, path))
    assert meta is not None
    return [slice_name(entry_key(edge, path), meta.slice_version, i) for i in range(2)]


def entry_key(edge: Edge, path: str) -> str:
    record = edge.node.store.peek_record(f"videos|video.test|{path}")
    generation = f"\n#{record.generation}" if record is not None and record.generation else ""
    scope = edge.node.store.purges.lookup("videos", "video.test", path)[0]
    return f"videos|video.test|{path}" + (f"\n@{scope}" if scope else "") + generation


async def where(edge: Edge, path: str) -> tuple[list[bool], list[bool]]:
    """(in memory, on disk) for each slice of `path`."""
    held = names(edge, path)
    return [n in edge.node.store.memory for n in held], await edge.node.store.disk.contains(held)


async def get(edge: Edge, path: str, body: bytes | None = None) -> None:
    status, _, got = await edge.get(path)
    assert (status, got) == (200, BODIES[path] if body is None else body)
    await settled(edge)


@pytest.mark.parametrize("fast", [True, False])
async def test_a_kept_slice_is_in_memory_only_and_an_evicted_one_goes_to_disk(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    written = spills("written")
    async with exclusive_edge(origin, tmp_path, fast) as edge:
        await get(edge, "/o0")
        assert await where(edge, "/o0") == ([True, True], [False, False])  # memory alone holds it
        await get(edge, "/o0")  # a memory hit
        for n in range(1, 5):  # 8 slices more: /o0's are evicted, and written to disk
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        assert spills("written") - written == 2
        await get(edge, "/o0")  # a disk hit, taken into memory: it leaves the disk
        # (the fast path offers memory the first slice of an answer only: the second is sent from its file)
        taken = [True, not fast]
        assert await where(edge, "/o0") == (taken, [not t for t in taken])
        for n in range(5, 9):  # 8 slices more: what memory took of /o0 goes back to disk
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        await get(edge, "/o0")
    assert all(origin.hits[p] == 1 for p in BODIES)


async def test_inclusive_tiers_write_every_fill_to_both(origin: Origin, tmp_path: Path) -> None:
    async with exclusive_edge(origin, tmp_path, True, tiers="inclusive") as edge:
        assert edge.node.store.memory.on_drop is None
        await get(edge, "/o0")
        assert await where(edge, "/o0") == ([True, True], [True, True])
        for n in range(1, 5):
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        await get(edge, "/o0")
        assert await where(edge, "/o0") == ([True, False], [True, True])  # a disk hit stays on disk
    assert all(origin.hits[p] == 1 for p in list(BODIES)[:5])


def held_spills(edge: Edge) -> asyncio.Event:
    """Spills wait, before their check, until the event is set (as on a slow disk)."""
    store = edge.node.store
    check: Callable[[str, str], Awaitable[bool]] = store._current
    gate = asyncio.Event()

    async def late(entry_key: str, version: str) -> bool:
        await gate.wait()
        return await check(entry_key, version)

    store._current = late  # type: ignore[method-assign]
    return gate


@pytest.mark.parametrize("kind", ["url", "site", "version"])
async def test_a_purge_or_a_new_version_between_eviction_and_spill_writes_nothing(
    origin: Origin, tmp_path: Path, kind: str
) -> None:
    stale = spills("stale")
    new = os.urandom(BODY)
    async with exclusive_edge(origin, tmp_path, True) as edge:
        store = edge.node.store
        await get(edge, "/o0")
        old = names(edge, "/o0")
        gate = held_spills(edge)
        for n in range(1, 5):  # /o0's slices are evicted; their spills wait
            status, _, body = await edge.get(f"/o{n}")
            assert (status, body) == (200, BODIES[f"/o{n}"])
        await asyncio.gather(*edge.node.engine._tasks)
        assert [n in store._writing for n in old] == [True, True]
        origin.put("/o0", new, etag='"v2"')
        if kind == "version":  # the origin's new copy, fetched meanwhile (max-age=0: revalidated, a 200)
            status, _, body = await edge.get("/o0", **{"Cache-Control": "max-age=0"})
            assert (status, body) == (200, new)
        else:
            host, path = ("video.test", "/o0") if kind == "url" else ("", "")
            entry = Entry("test~1", 1, kind, "videos", host, path)
            assert await apply_entry(store, edge.node.config.sites, entry, 0.0, numbered=False)
        gate.set()
        await settled(edge)
        assert await store.disk.contains(old) == [False, False]
        assert spills("stale") - stale >= 2
        await get(edge, "/o0", new)
    # the new version: its first slice with the revalidation (If-None-Match "v1"), its second on its own
    assert origin.hits["/o0"] == (3 if kind == "version" else 2)


async def test_a_full_write_back_sends_a_fills_slice_to_disk_and_leaves_a_disk_hit_there(
    origin: Origin, tmp_path: Path
) -> None:
    """The write-back holds one slice (its bound) and that slice's write waits. A fill's next slice, which memory
    would take by evicting another to nowhere (past the bound: dropped, fetched again from origin), goes to disk
    at once as inclusive tiers write it, where the fill waits for its write; and a disk hit stays on disk. Before,
    /o4's second slice evicted /o0's second, dropped past the bound and fetched again (this test's former
    version asserted that drop)."""
    dropped, written = spills("dropped"), spills("written")
    async with exclusive_edge(origin, tmp_path, False, bound=SLICE + 1) as edge:  # the full path takes every slice
        store = edge.node.store
        await get(edge, "/o0")
        old = names(edge, "/o0")
        gate = held_spills(edge)
        await get_held(edge, "/o1")
        await get_held(edge, "/o2")
        await get_held(edge, "/o3")
        await get_held(edge, "/o4")  # its first slice evicts /o0's first, whose spill waits: the write-back is full
        assert [n in store._writing for n in old] == [True, False]
        assert [n in store.memory for n in old] == [False, True]  # not evicted by /o4's second slice
        assert await where(edge, "/o4") == ([True, False], [False, True])  # which went to disk
        await get_held(edge, "/o4")  # a disk hit while the write-back is full: not taken into memory
        assert await where(edge, "/o4") == ([True, False], [False, True])
        assert store.spilling == SLICE
        gate.set()
        await settled(edge)
        assert store.spilling == 0
        assert [n in store.memory for n in old] == [False, True]
        assert await store.disk.contains(old) == [True, False]
        assert (spills("dropped") - dropped, spills("written") - written) == (0, 1)
        await get(edge, "/o0")
    assert all(origin.hits[p] == 1 for p in list(BODIES)[:5])


async def get_held(edge: Edge, path: str, bodies: dict[str, bytes] = BODIES) -> None:
    status, _, body = await edge.get(path)
    assert (status, body) == (200, bodies[path])
    await asyncio.gather(*edge.node.engine._tasks)


async def test_a_slice_evicted_while_its_disk_copy_is_being_deleted_is_on_disk_after(
    origin: Origin, tmp_path: Path
) -> None:
    """A disk hit memory takes is deleted from disk; evicted again before that delete is done, its spill waits for
    the delete (else the delete would take the slice just written back). The write-back's bound holds all of this
    test's spills: the gated deletes hold /o0's back while the next fills evict the others, and at 4 slices one of
    them was sometimes dropped (counted so), which is the bound's test's to show, not this one's."""
    async with exclusive_edge(origin, tmp_path, False, bound=64 * SLICE) as edge:
        store = edge.node.store
        await get(edge, "/o0")
        for n in range(1, 5):
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        delete, gate = store.disk.delete, asyncio.Event()

        async def slow_delete(key: str) -> None:
            await gate.wait()
            await delete(key)

        store.disk.delete = slow_delete  # type: ignore[method-assign]
        status, _, body = await edge.get("/o0")  # taken into memory; its deletes wait
        assert (status, body) == (200, BODIES["/o0"])
        for n in range(5, 9):  # and evicted again, while they wait
            await get_held(edge, f"/o{n}")
        assert [n in store.memory for n in names(edge, "/o0")] == [False, False]
        gate.set()
        await settled(edge)
        assert await where(edge, "/o0") == ([False, False], [True, True])
        await get(edge, "/o0")
    assert all(origin.hits[p] == 1 for p in BODIES)


@pytest.mark.parametrize("fast", [True, False])
async def test_a_small_memory_tier_spills_a_fills_burst_without_refetching(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A tier of 8 slices (S3-FIFO: a new slice is evicted at the next one's admission) bounded its write-back to an
    eighth of itself, one slice: each fill's slices, evicted in a burst, were dropped past it, the fill had let them
    go as stored, and its reader fetched them again: 95 origin requests for 41 answers."""
    bodies = {f"/s{i}": bytes([i]) * BODY for i in range(40)}
    for path, body in bodies.items():
        origin.put(path, body)
    config = make_config(tmp_path / "c", [origin.url], memory_bytes=8 * SLICE, disk_bytes=16 * SLICE, slice_bytes=SLICE)
    config = replace(config, cache=replace(config.cache, tiers="exclusive"), fast_path=fast)
    async with start_edge(config) as edge:
        for path, body in bodies.items():
            status, _, got = await edge.get(path)
            assert (status, got) == (200, body)
        status, _, got = await edge.get("/s0")
        assert (status, got) == (200, bodies["/s0"])
    assert origin.hits["/s0"] == 2  # evicted from both tiers (16 slices of disk), then fetched again once
    assert sum(origin.hits.values()) == 41


async def test_a_slice_a_late_disk_read_takes_while_its_spill_waits_is_spilled_again_when_evicted(
    origin: Origin, tmp_path: Path
) -> None:
    """Two readers of a slice on disk: the first takes it into memory, memory evicts it and its spill waits; the
    second's read, started before the first's delete, ends now and takes it into memory again, so its delete is
    queued after that spill. Evicted again before the spill is done, the slice was not spilled (it was "being
    written already"): the spill wrote it, the delete took it, and it was in neither tier (fetched again)."""
    fresh = {f"/p{n}": os.urandom(BODY) for n in range(8)}
    for path, body in fresh.items():
        origin.put(path, body)
    async with exclusive_edge(origin, tmp_path, False, bound=64 * SLICE) as edge:
        store = edge.node.store
        await get(edge, "/o0")
        for n in range(1, 5):
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        key, first = entry_key(edge, "/o0"), names(edge, "/o0")[0]
        meta = store.peek_meta(key)
        assert meta is not None
        read, reached, late = store.disk.get, asyncio.Event(), asyncio.Event()

        async def slow_read(name: str) -> bytes | None:
            data = await read(name)
            if name == first and not reached.is_set():  # the second reader's: read, and slow to come back
                reached.set()
                await late.wait()
            return data

        store.disk.get = slow_read  # type: ignore[method-assign]
        second = asyncio.ensure_future(store.slice_from_disk(key, meta, 0))
        await reached.wait()
        await get(edge, "/o0")  # the first reader: taken into memory, deleted from disk
        assert await where(edge, "/o0") == ([True, True], [False, False])
        gate = held_spills(edge)
        for n in range(4):  # evicted: its spill waits
            await get_held(edge, f"/p{n}", fresh)
        assert (first in store._writing, first in store.memory) == (True, False)
        late.set()
        assert await second == BODIES["/o0"][:SLICE]  # taken into memory again; its delete after the spill
        assert first in store.memory
        for n in range(4, 8):  # evicted again while the first spill waits
            await get_held(edge, f"/p{n}", fresh)
        assert first not in store.memory
        gate.set()
        await settled(edge)
        assert await where(edge, "/o0") == ([False, False], [True, True])
        await get(edge, "/o0")
    assert origin.hits["/o0"] == 1


async def test_a_slice_memory_took_from_disk_goes_back_to_the_disks_main_and_outlives_a_run_of_new_ones(
    origin: Origin, tmp_path: Path
) -> None:
    """Its reuse on disk is not forgotten: written back as a new slice (the disk's small FIFO, no count), it went
    before the one-hit wonders filled after it and was fetched again."""
    burst = {f"/n{n}": os.urandom(BODY) for n in range(40)}  # 80 slices through a disk of 64
    for path, body in burst.items():
        origin.put(path, body)
    async with exclusive_edge(origin, tmp_path, False) as edge:
        await get(edge, "/o0")
        for n in range(1, 5):
            await get(edge, f"/o{n}")
        await get(edge, "/o0")  # a disk hit, both slices taken into memory
        for n in range(5, 9):  # and evicted back to disk
            await get(edge, f"/o{n}")
        assert await where(edge, "/o0") == ([False, False], [True, True])
        tier = edge.node.store.disk._slots[0].tier
        assert tier is not None
        places = await tier._run(lambda: [tier._queues.find(n) for n in names(edge, "/o0")])
        assert places == [(MAIN, SLICE, MAX_FREQ)] * 2
        for path, body in burst.items():
            await get(edge, path, body)
        assert await where(edge, "/o0") == ([False, False], [True, True])
        await get(edge, "/o0")
    assert origin.hits["/o0"] == 1
    assert all(origin.hits[p] == 1 for p in burst)


async def test_the_rss_bounds_shrink_evicts_no_more_than_the_write_back_takes_and_the_rest_as_it_writes(
    origin: Origin, tmp_path: Path
) -> None:
    """The RSS bound (rssbound.bound_rss) lowers the memory tier's limit by 6 slices while memory alone holds 8 and
    the write-back takes 4. It evicted all 6 at once: 2 past the write-back's bound were dropped and fetched again
    from origin (2-74 MiB a 10 s run of the README's hit load). Now it evicts 4, holds the tier at what it keeps,
    and evicts the other 2 as the writes finish: all 6 on disk, none dropped, none fetched again."""
    dropped, written = spills("dropped"), spills("written")
    async with exclusive_edge(origin, tmp_path, False) as edge:
        store = edge.node.store
        assert store.slice_size == SLICE
        for n in range(4):
            await get(edge, f"/o{n}")
        assert len(store.memory) == 8
        assert store.spilling == 0
        target = 2 * (SLICE + ENTRY_OVERHEAD)
        assert store.memory.set_limit(target) == target
        assert store.spilling == store.spill_bound == 4 * SLICE  # as much as the write-back takes, no more
        assert len(store.memory) == 4
        assert store.memory.limit == 4 * (SLICE + ENTRY_OVERHEAD)  # held where it is: it takes nothing more
        await settled(edge)
        assert (spills("dropped") - dropped, spills("written") - written) == (0, 6)
        assert len(store.memory) == 2
        assert store.memory.limit == target
        assert store.spilling == 0
        for n in range(4):
            await get(edge, f"/o{n}")
        assert spills("dropped") - dropped == 0
    assert [origin.hits[f"/o{n}"] for n in range(4)] == [1, 1, 1, 1]
