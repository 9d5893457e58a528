"""The records that hide purged copies are bounded per disk (storage.diskrecords): the oldest past the bound goes,
its bucket counts the drop in the same transaction, and the counts outlive a restart. Real diskcache directories."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from prometheus_client import REGISTRY

from edgecache.config.model import Disk
from edgecache.core.keys import PrimaryRecord, bucket_generation, digest
from edgecache.errors import StorageError
from edgecache.storage.disk import DiskTier
from edgecache.storage.diskindex import PINNED, RECORDS, bucket_of
from edgecache.storage.disks import Disks
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import Store

MiB = 2**20


def _records(directory: Path) -> list[str]:
    """The bounded records' keys, oldest first."""
    with sqlite3.connect(directory / "cache.db") as con:
        return [k for (k,) in con.execute("SELECT key FROM edge_index WHERE queue = ? ORDER BY seq", (RECORDS,))]


def _buckets(directory: Path) -> dict[int, int]:
    with sqlite3.connect(directory / "cache.db") as con:
        return dict(con.execute("SELECT bucket, dropped FROM edge_buckets").fetchall())


def _dropped() -> float:
    return REGISTRY.get_sample_value("edgecache_purged_records_dropped_total") or 0.0


def _name(primary: str) -> str:
    return "v:" + digest(primary)


def _open(directory: Path, most: int) -> Store:
    store = Store(MemoryTier(MiB), Disks.open_all([Disk(directory, 64 * MiB)], threads=1))
    store.purged_records = most
    return store


async def test_the_table_stays_at_its_bound_and_each_drop_is_counted_in_its_bucket(tmp_path: Path) -> None:
    store = _open(tmp_path, 3)
    before = _dropped()
    try:
        for i in range(10):
            await store.invalidate(f"s|h|/{i}")
            assert len(_records(tmp_path)) == min(i + 1, 3)
        assert _dropped() - before == 7
        assert _records(tmp_path) == [_name(f"s|h|/{i}") for i in (7, 8, 9)]
        dropped = [bucket_of(_name(f"s|h|/{i}")) for i in range(7)]
        assert _buckets(tmp_path) == {b: dropped.count(b) for b in dropped}
        # A record written again is the newest: the one written longest ago goes first.
        await store.invalidate("s|h|/7")
        await store.soft_invalidate("s|h|/10", 5.0)
        assert _records(tmp_path) == [_name(f"s|h|/{i}") for i in (9, 7, 10)]
        # The values went with their rows: no record of a dropped URL is read back.
        with sqlite3.connect(tmp_path / "cache.db") as con:
            held = {k for (k,) in con.execute("SELECT key FROM Cache WHERE key GLOB 'v:*'")}
        assert held == set(_records(tmp_path))
    finally:
        store.disk.close()


async def test_a_dropped_urls_lookup_gets_its_buckets_generation_after_a_restart(tmp_path: Path) -> None:
    store = _open(tmp_path, 1)
    try:
        await store.invalidate("s|h|/purged")
        purged = await store.get_record("s|h|/purged")
        assert purged.generation
        assert purged.hides
        await store.invalidate("s|h|/other")  # past the bound: /purged's record goes
    finally:
        store.disk.close()
    bucket = bucket_of(_name("s|h|/purged"))
    assert _buckets(tmp_path)[bucket] == 1
    store = _open(tmp_path, 1)  # a restart: nothing held in memory
    try:
        record = await store.get_record("s|h|/purged")
        assert record == PrimaryRecord(bucket_generation(1)) == PrimaryRecord("~1")
        assert not record.hides  # written again (a Vary learnt), it is the policy's, as a record of no purge is
        untouched = next(f"s|h|/{i}" for i in range(100) if bucket_of(_name(f"s|h|/{i}")) != bucket)
        assert await store.get_record(untouched) == PrimaryRecord()  # keyed as before any drop
    finally:
        store.disk.close()


async def test_records_an_older_version_pinned_are_bounded_and_admin_jobs_stay_pinned(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    old = [_name(f"s|h|/{i}") for i in range(5)]
    try:
        await tier.put("job:1", b"{}", pinned=True)
        for key in old:  # as a version before this one wrote a purge's record
            await tier.put(key, PrimaryRecord("abcd").to_bytes(), pinned=True)
        assert tier._queues.count(PINNED) == 6
    finally:
        tier.close()
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        assert _records(tmp_path) == old  # in the order they were written
        await tier.put_record(_name("s|h|/new"), PrimaryRecord("ef01").to_bytes(), 2)
        assert _records(tmp_path) == [old[4], _name("s|h|/new")]
        assert await tier.get("job:1") == b"{}"
        assert tier._queues.count(PINNED) == 1
        assert await tier.get_record(old[0]) == (None, _buckets(tmp_path)[bucket_of(old[0])])
    finally:
        tier.close()


async def test_each_disk_bounds_its_own_records_and_keeps_its_own_buckets(tmp_path: Path) -> None:
    """A record, and the count of its bucket, live on the disk placement gives its key: each disk keeps `most`."""
    disks = Disks.open_all([Disk(tmp_path / "a", 64 * MiB), Disk(tmp_path / "b", 64 * MiB)], threads=1)
    store = Store(MemoryTier(MiB), disks)
    store.purged_records = 2
    primaries = [f"s|h|/{i}" for i in range(12)]
    homes = {p: disks.home(_name(p)) for p in primaries}
    assert set(homes.values()) == {0, 1}
    try:
        for p in primaries:
            await store.invalidate(p)
        for i, directory in enumerate((tmp_path / "a", tmp_path / "b")):
            mine = [p for p in primaries if homes[p] == i]
            assert _records(directory) == [_name(p) for p in mine[-2:]]
            dropped = [bucket_of(_name(p)) for p in mine[:-2]]
            assert _buckets(directory) == {b: dropped.count(b) for b in dropped}
        store._forget_held()  # read from the disks again: each dropped one keyed by its own disk's count
        for p in primaries[:-4]:
            directory = tmp_path / ("a", "b")[homes[p]]
            if _name(p) not in _records(directory):
                counted = _buckets(directory)[bucket_of(_name(p))]
                assert await store.get_record(p) == PrimaryRecord(f"~{counted}")
    finally:
        disks.close()


async def test_a_record_that_fails_its_checksum_is_counted_as_its_buckets_drop(tmp_path: Path) -> None:
    """A purge's record damaged on the disk is deleted when read, as any value failing its checksum is: the look-up
    then keys the object by its bucket's count, which counts that loss too (in the delete's transaction): keyed as
    before the purge (no generation), it would find the copies stored before it."""
    store = _open(tmp_path, 10)
    try:
        await store.invalidate("s|h|/purged")
        assert (await store.get_record("s|h|/purged")).hides
    finally:
        store.disk.close()
    name = _name("s|h|/purged")
    with sqlite3.connect(tmp_path / "cache.db") as con:
        (value,) = con.execute("SELECT value FROM Cache WHERE key = ?", (name,)).fetchone()
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes([value[0] ^ 1]) + value[1:], name))
    before = _dropped()
    store = _open(tmp_path, 10)  # a restart: nothing held in memory
    try:
        assert await store.get_record("s|h|/purged") == PrimaryRecord(bucket_generation(1))
        assert (_records(tmp_path), _buckets(tmp_path)) == ([], {bucket_of(name): 1})
        assert _dropped() - before == 1
    finally:
        store.disk.close()


async def test_a_record_that_cannot_be_read_for_a_lock_keys_nothing_stored_before(tmp_path: Path) -> None:
    """A record's read that fails for one operation (SQLite's lock timeout: the disk stays in service) gives a
    generation of its own, held for that look-up only: keyed as before any purge (no generation) it would find
    the copies the record hides; the next read, which succeeds, gives the purge's record."""
    store = _open(tmp_path, 10)
    try:
        await store.invalidate("s|h|/purged")
        purged = await store.get_record("s|h|/purged")
    finally:
        store.disk.close()
    store = _open(tmp_path, 10)
    tier = store.disk._slots[0].tier  # type: ignore[attr-defined]
    assert tier is not None
    real = tier.get_record

    async def locked(key: str) -> tuple[bytes | None, int]:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise StorageError(f"disk tier: {exc}") from exc  # as DiskTier._run raises it

    try:
        tier.get_record = locked
        first, second = await store.get_record("s|h|/purged"), await store.get_record("s|h|/purged")
        assert first.generation not in ("", purged.generation)
        assert second.generation not in ("", purged.generation, first.generation)
        tier.get_record = real
        assert await store.get_record("s|h|/purged") == purged
    finally:
        store.disk.close()
