"""The workers' change counter (storage.epoch): a worker sees every change another one made, whenever it was made,
and never takes its own for another's."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import PrimaryRecord
from edgecache.storage.disk import DiskTier
from edgecache.storage.epoch import RING, Epoch, key_hash
from edgecache.storage.memory import MemoryTier
from edgecache.storage.purging import Purging
from edgecache.storage.store import Store


class _Racing(Epoch):
    """Another worker's change lands while this one bumps: between its read of the counter and its write."""

    __slots__ = ("between",)

    def bump(self, slot: int) -> None:
        between, self.between = getattr(self, "between", None), None
        if between is not None:
            between._changed()
        super().bump(slot)


def workers(epoch: Epoch, directory: Path) -> tuple[Purging, Purging]:
    """Two workers' views of one epoch (in one process: they share its memory as the workers' processes do)."""
    w0, w1 = Purging(directory), Purging(directory)
    w0.attach_epoch(epoch, 0)
    w1.attach_epoch(epoch, 1)
    return w0, w1


def test_a_change_another_worker_makes_while_this_one_bumps_is_seen(tmp_path: Path) -> None:
    """With one counter for all, a bump landing between another worker's read and its write was taken by that
    worker for its own: it never caught up on the change (an invalidation, a purge) and served what it held."""
    epoch = _Racing(2)
    w0, w1 = workers(epoch, tmp_path)
    epoch.between = w1
    w0._changed()
    assert (w0.stale(), w1.stale()) == (True, True)


def test_a_worker_takes_no_change_of_its_own_for_another_s(tmp_path: Path) -> None:
    w0, w1 = workers(Epoch(2), tmp_path)
    for _ in range(3):
        w0._changed()
    assert (w0.stale(), w1.stale()) == (False, True)
    w1._changed()
    assert (w0.stale(), w1.stale()) == (True, True)


def test_a_restarted_worker_sees_only_changes_made_after_it_started(tmp_path: Path) -> None:
    epoch = Epoch(2)
    _, w1 = workers(epoch, tmp_path)
    w1._changed()
    again = Purging(tmp_path)
    again.attach_epoch(epoch, 0)  # worker 0's successor: it read the disk after those changes
    assert not again.stale()
    w1._changed()
    assert again.stale()


class _Worker(Purging):
    """A worker's Purging side with what a catch-up forgets recorded (the Store forgets its tables)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.forgot: list[object] = []

    def _forget_held(self) -> None:
        self.forgot.append("all")

    def _forget_keys(self, hashes: list[int]) -> None:
        self.forgot.append(sorted(hashes))

    async def load_purges(self) -> None:
        self.forgot.append("purges read")


async def test_another_workers_replacement_is_forgotten_alone_and_a_purge_whole(tmp_path: Path) -> None:
    """A new copy stored over another made every other worker forget all it held, as a purge does: one client's
    no-cache requests for an object whose bytes change each time emptied the other workers' metadata (and so
    their decisions) at its request rate. Only the object's keys are forgotten now; a change, everything."""
    epoch = Epoch(3)
    w0, w1, w2 = (_Worker(tmp_path) for _ in range(3))
    for i, w in enumerate((w0, w1, w2)):
        w.attach_epoch(epoch, i)
    w0.replaced("entry-a", "primary-a")
    w2.replaced("entry-b", "primary-b")
    assert (w0.stale(), w1.stale(), w2.stale()) == (True, True, True)
    await w1.catch_up()
    assert w1.forgot == [sorted(key_hash(k) for k in ("entry-a", "primary-a", "entry-b", "primary-b"))]
    assert not w1.stale()
    await w0.catch_up()
    assert w0.forgot == [sorted(key_hash(k) for k in ("entry-b", "primary-b"))]
    w2._changed()
    w2.replaced("entry-c", "primary-c")
    await w1.catch_up()
    assert w1.forgot[1:] == ["all", "purges read"]
    assert not w1.stale()


async def test_a_worker_further_behind_than_the_ring_forgets_everything(tmp_path: Path) -> None:
    epoch = Epoch(2)
    w0, w1 = _Worker(tmp_path), _Worker(tmp_path)
    w0.attach_epoch(epoch, 0)
    w1.attach_epoch(epoch, 1)
    for i in range(RING // 2):
        w0.replaced(f"entry-{i}", f"primary-{i}")
    await w1.catch_up()
    assert len(w1.forgot) == 1
    assert len(w1.forgot[0]) == RING  # type: ignore[arg-type]
    w0.replaced("one more", "past the ring")
    for i in range(RING // 2):
        w0.replaced(f"entry-{i}", f"primary-{i}")
    await w1.catch_up()
    assert w1.forgot[1:] == ["all", "purges read"]


async def test_a_store_forgets_the_replaced_objects_metadata_and_record_and_keeps_the_rest(tmp_path: Path) -> None:
    epoch = Epoch(2)
    tiers = [DiskTier(tmp_path / "disk", 64 * 2**20, threads=1) for _ in range(2)]
    stores = [Store(MemoryTier(2**20), tier) for tier in tiers]
    for i, store in enumerate(stores):
        store.attach_epoch(epoch, i)
    meta = ObjectMeta(200, (("ETag", '"v1"'),), 10, '"v1"', False, 1000.0, 1000.0, 2**20, (), "t1")
    try:
        for key in ("a", "b"):
            stores[1].remember_meta(f"entry-{key}", meta)
            stores[1].remember_record(f"primary-{key}", PrimaryRecord())
        stores[0].replaced("entry-a", "primary-a")
        assert stores[1].stale()
        await stores[1].catch_up()
        held = {k: stores[1].peek_meta(f"entry-{k}") is meta for k in ("a", "b")}
        records = {k: stores[1].peek_record(f"primary-{k}") is not None for k in ("a", "b")}
        assert (held, records) == ({"a": False, "b": True}, {"a": False, "b": True})
        stores[1].remember_meta("entry-a", meta)  # held again since: indexed as it is put, and forgotten again
        stores[0].replaced("entry-a", "primary-a")
        await stores[1].catch_up()
        assert (stores[1].peek_meta("entry-a"), stores[1].peek_meta("entry-b")) == (None, meta)
    finally:
        for tier in tiers:
            tier.close()


async def test_the_index_of_keys_held_is_bounded_by_the_tables_budget_too(tmp_path: Path) -> None:
    """The index a replacement by another worker makes kept every key put since, long after the tables had
    dropped it, until it held four times their count of entries (65,536 by default): with long keys (8 KB URLs)
    hundreds of MB, past the byte budget the tables hold (storage.heldmeta). It holds the tables' keys alone now."""
    epoch = Epoch(2)
    tiers = [DiskTier(tmp_path / "disk", 64 * 2**20, threads=1) for _ in range(2)]
    budget = 2**20
    stores = [Store(MemoryTier(2**20), tier, meta_bytes=budget) for tier in tiers]
    for i, store in enumerate(stores):
        store.attach_epoch(epoch, i)
    meta = ObjectMeta(200, (("ETag", '"v1"'),), 10, '"v1"', False, 1000.0, 1000.0, 2**20, (), "t1")
    try:
        stores[0].replaced("entry-a", "primary-a")
        await stores[1].catch_up()  # the index is made
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(2000):  # 16 MB of keys
                stores[1].remember_meta(f"entry-{i}-" + "x" * 8192, meta)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 3 * budget
        stores[0].replaced("entry-1999-" + "x" * 8192, "p")  # the newest is still found and forgotten
        await stores[1].catch_up()
        assert stores[1].peek_meta("entry-1999-" + "x" * 8192) is None
    finally:
        for tier in tiers:
            tier.close()
