"""The disk tier's eviction index on real diskcache directories: shared by workers, kept across restarts, hits
batched, and no value without its row or row without its value."""

from __future__ import annotations

import asyncio
import datetime
import errno
import json
import sqlite3
from collections import Counter
from pathlib import Path

import diskcache
import pytest

from edgecache.admin.jobs import Job, JobRunner
from edgecache.config.model import Disk
from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import PrimaryRecord, digest
from edgecache.errors import StorageError
from edgecache.storage import disk
from edgecache.storage.disk import DiskTier
from edgecache.storage.diskindex import RECORDS
from edgecache.storage.disks import Disks
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import Store, slice_name
from tests.origin import Origin

KiB = 1024
VALUE = 64 * KiB  # a file of its own (MIN_FILE_SIZE is 32 KiB)


def _value(n: int) -> bytes:
    return bytes([n % 251]) * VALUE


def _rows(directory: Path) -> dict[str, int]:
    with sqlite3.connect(directory / "cache.db") as con:
        return dict(con.execute("SELECT key, queue FROM edge_index WHERE queue != 2").fetchall())


def _values(directory: Path) -> set[str]:
    with sqlite3.connect(directory / "cache.db") as con:
        return {k for (k,) in con.execute("SELECT key FROM Cache")}


def _stored_bytes(directory: Path) -> int:
    with sqlite3.connect(directory / "cache.db") as con:
        return int(con.execute("SELECT coalesce(sum(size), 0) FROM Cache").fetchone()[0])


def _files(directory: Path) -> int:
    return len(list(directory.rglob("*.val")))


async def test_two_workers_on_one_directory_hold_one_budget(tmp_path: Path) -> None:
    budget = 10 * VALUE
    one, two = DiskTier(tmp_path, budget, threads=1), DiskTier(tmp_path, budget, threads=1)
    try:
        for i in range(40):
            assert await (one if i % 2 else two).put(f"k{i}", _value(i))
            assert _stored_bytes(tmp_path) <= budget
        assert _rows(tmp_path).keys() == _values(tmp_path) == {f"k{i}" for i in range(30, 40)}
        assert _files(tmp_path) == 10
        for i in range(30, 40):  # either worker reads what the other wrote
            assert await (two if i % 2 else one).get(f"k{i}") == _value(i)
    finally:
        one.close()
        two.close()


async def test_hits_write_nothing_until_the_batch_and_the_batch_is_one_transaction(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 100 * VALUE, threads=1)
    statements: list[str] = []
    await tier._run(lambda: tier._cache._con.set_trace_callback(statements.append))
    try:
        await tier.put("hot", _value(1))
        statements.clear()
        for _ in range(50):
            assert await tier.get("hot") == _value(1)
            opened = await tier.open("hot")
            assert isinstance(opened, disk.io.BufferedReader)
            opened.close()
        assert not [s for s in statements if s.startswith(("BEGIN", "UPDATE", "INSERT", "DELETE"))]
        tier._flush_hits()
        await tier._run(lambda: None)  # the batch was queued before this: it is written
        assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
        assert tier._queues.find("hot") == (0, VALUE, 3)  # 100 hits, the counter capped at 3
    finally:
        tier.close()


async def test_the_hit_batch_is_bounded(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 100 * VALUE, threads=1)
    try:
        tier._flushing = True  # a batch in flight: new keys past the bound are dropped, not queued
        for i in range(disk.HIT_BATCH + 100):
            tier.note_hit(f"k{i}")
        assert len(tier._hits) == disk.HIT_BATCH
        tier.note_hit("k0")
        assert tier._hits["k0"] == 2
    finally:
        tier._flushing = False
        tier.close()


async def test_hits_are_written_at_close_and_the_state_survives_a_restart(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    for key in ("a", "b", "c", "d"):
        await tier.put(key, _value(ord(key)))
    assert await tier.get("a") == _value(ord("a"))
    tier.close()  # the hit on a is written now
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    try:
        assert tier._queues.find("a") == (0, VALUE, 1)
        await tier.put("e", _value(5))  # small is over its share: a (used) is promoted, b (not) evicted
        assert tier.policy.in_main("a")
        assert tier.policy.in_ghost("b")
        assert _rows(tmp_path) == {"a": 1, "c": 0, "d": 0, "e": 0}
        assert _values(tmp_path) == {"a", "c", "d", "e"}
    finally:
        tier.close()


async def test_eviction_deletes_value_row_and_file_together(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 3 * VALUE, threads=1)
    try:
        for i in range(20):
            await tier.put(f"k{i}", _value(i))
            assert _rows(tmp_path).keys() == _values(tmp_path)
            assert _files(tmp_path) == len(_values(tmp_path)) <= 3
        await tier.delete("k19")
        assert _rows(tmp_path).keys() == _values(tmp_path) == {"k17", "k18"}
        assert _files(tmp_path) == 2
    finally:
        tier.close()


async def test_at_start_a_value_without_a_row_is_adopted(tmp_path: Path) -> None:
    DiskTier(tmp_path, 10 * VALUE, threads=1).close()
    raw = diskcache.Cache(str(tmp_path), eviction_policy="none")
    raw.set("orphan", _value(3))  # written behind the index's back
    raw.close()
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    try:
        assert _rows(tmp_path) == {"orphan": 0}
        assert await tier.get("orphan") == _value(3)
    finally:
        tier.close()


async def test_at_start_a_row_without_its_value_is_dropped(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    await tier.put("kept", _value(1))
    await tier.put("lost", _value(2))
    tier.close()
    raw = diskcache.Cache(str(tmp_path), eviction_policy="none")
    raw.delete("lost")  # a crash between admission and write
    raw.close()
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    try:
        assert _rows(tmp_path) == {"kept": 0}
        assert tier.policy.used_bytes == VALUE
    finally:
        tier.close()


async def test_a_worker_opening_the_disk_keeps_the_write_another_has_in_flight(tmp_path: Path) -> None:
    """A worker opens the disk between another's admission of a value and its write (started, or replaced, while
    the other serves): that row is a write in flight, not a crash's leftover, and its value stays. Dropped at the
    open, the write took itself for purged and deleted its own value: a slice lost (a 2-worker test_disks flake)."""
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    real_set = tier._cache.set
    opened: list[DiskTier] = []

    def set_after_a_second_open(key: str, value: bytes, **kw: object) -> bool:
        opened.append(DiskTier(tmp_path, 10 * VALUE, threads=1))
        return bool(real_set(key, value, **kw))

    tier._cache.set = set_after_a_second_open  # type: ignore[method-assign]
    try:
        assert await tier.put("k", _value(1))
        assert _rows(tmp_path) == {"k": 0}
        assert await opened[0].get("k") == _value(1)
    finally:
        for t in (tier, *opened):
            t.close()
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)  # alone again: what it finds agrees
    try:
        assert _rows(tmp_path) == {"k": 0}
        assert await tier.get("k") == _value(1)
    finally:
        tier.close()


async def test_a_value_deleted_between_its_admission_and_its_write_leaves_no_orphan(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    real_set = tier._cache.set

    def set_after_a_purge(key: str, value: bytes, **kw: object) -> bool:
        tier._forget(key)  # another worker's purge, committed between this put's two steps
        return bool(real_set(key, value, **kw))

    tier._cache.set = set_after_a_purge  # type: ignore[method-assign]
    try:
        assert not await tier.put("k", _value(1))
        assert _rows(tmp_path) == {}
        assert _values(tmp_path) == set()
        assert _files(tmp_path) == 0
    finally:
        tier.close()


async def test_a_failed_file_write_drops_the_lease(tmp_path: Path) -> None:
    """The file's write fails (a full disk, before any transaction): no file, no row, and the lease is let go."""
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)

    def full(value: bytes) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        assert await tier.lease([disk.lease_name("k")], 30) == 1
        tier._slice_disk.place = full  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="No space left"):
            await tier.put("k", _value(1), lease=disk.lease_name("k"))
        assert (_rows(tmp_path), _values(tmp_path), _files(tmp_path)) == ({}, set(), 0)
        assert await tier.contains([disk.lease_name("k"), "k"]) == [False, False]
    finally:
        tier.close()


async def test_a_failed_commit_leaves_no_file_and_drops_the_lease(tmp_path: Path) -> None:
    """The row's commit fails after the file was placed (a full disk, a locked database): no file, no row, no
    index entry, and the lease that guarded the fill is let go, so whoever waits on it fetches the value."""
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    real_set = tier._cache.set

    def set_fails(key: str, value: object, **kw: object) -> bool:
        if key == "k":
            raise sqlite3.OperationalError("disk I/O error")
        return bool(real_set(key, value, **kw))

    try:
        assert await tier.lease([disk.lease_name("k")], 30) == 1
        tier._cache.set = set_fails  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await tier.put("k", _value(1), lease=disk.lease_name("k"))
        assert (_rows(tmp_path), _values(tmp_path), _files(tmp_path)) == ({}, set(), 0)
        assert await tier.contains([disk.lease_name("k"), "k"]) == [False, False]
    finally:
        tier.close()


async def test_a_smaller_budget_at_start_evicts_down_to_it(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    for i in range(10):
        await tier.put(f"k{i}", _value(i))
    tier.close()
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    try:
        assert _values(tmp_path) == _rows(tmp_path).keys() == {"k6", "k7", "k8", "k9"}
        assert _files(tmp_path) == 4
    finally:
        tier.close()


async def test_a_pinned_value_outlives_any_scan_and_a_restart(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    await tier.put("record", b"generation", pinned=True)
    for i in range(20):
        await tier.put(f"k{i}", _value(i))
    tier.close()
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    try:
        assert await tier.get("record") == b"generation"
        assert _rows(tmp_path)["record"] == 4
        await tier.put("record", b"plain")  # stored again unpinned: the policy's, like any value
        assert _rows(tmp_path)["record"] == 0
        for i in range(20, 30):
            await tier.put(f"k{i}", _value(i))
        assert "record" not in _values(tmp_path)
    finally:
        tier.close()


async def test_the_store_pins_a_record_that_hides_copies_and_counts_metadata_with_slice_hits(tmp_path: Path) -> None:
    disks = Disks.open_all([Disk(tmp_path, 64 * VALUE)], threads=1)
    store = Store(MemoryTier(VALUE), disks)
    tier = disks._slots[0].tier
    assert isinstance(tier, DiskTier)
    try:
        await store.put_record("plain", PrimaryRecord())
        await store.invalidate("purged")
        await store.soft_invalidate("soft", 1.0)
        rows = _rows(tmp_path)
        assert rows["v:" + digest("plain")] == 0
        assert rows["v:" + digest("purged")] == rows["v:" + digest("soft")] == RECORDS
        meta = ObjectMeta(200, (), VALUE, "v1", False, 0.0, 0.0, VALUE, token="t")
        name = slice_name("entry", meta.slice_version, 0)
        await tier.put(name, _value(1))
        await tier.put("m:" + digest("entry"), b"meta")
        assert await store.slice_from_disk("entry", meta, 0) == _value(1)  # a hit read whole
        opened = await store.open_slice("entry", meta, 0)  # a hit opened for the fast path
        assert opened is not None
        assert store.open_file("entry", meta, 0) is opened  # a hit on the file held open
        assert dict(tier._hits) == {name: 3, "m:" + digest("entry"): 3}
    finally:
        store.close_files()
        disks.close()


async def test_prefetch_jobs_outlive_a_scan_of_the_disk(tmp_path: Path) -> None:
    now = datetime.datetime.now()
    closed = (
        (now + datetime.timedelta(hours=2)).strftime("%H:%M"),
        (now + datetime.timedelta(hours=3)).strftime("%H:%M"),
    )
    tier = DiskTier(tmp_path, 4 * VALUE, threads=1)
    runner = JobRunner(tier, "http://127.0.0.1:1")
    await runner.start()
    job = await runner.submit(Job(id="", owner="ops", urls=["http://video.test/a"], window=closed))
    await runner.close()
    for i in range(40):  # ten times the budget, none of it read
        await tier.put(f"k{i}", _value(i))
    again = JobRunner(tier, "http://127.0.0.1:1")
    await again.start()
    try:
        assert again.jobs[job.id].urls == ["http://video.test/a"]
    finally:
        await again.close()
        tier.close()


async def test_a_job_record_on_a_disk_out_of_service_leaves_the_node_starting(tmp_path: Path) -> None:
    """With several disks, a job's record and the jobs' index may live on different disks. Worker 0 read every
    record at its start, and the OutOfService of a record on a failed disk ended it: the supervisor restarted it
    in a loop and the node answered nothing (README: "the node keeps serving"). The job waits for its disk now,
    named by the index, and resumes once the disk is back."""
    now = datetime.datetime.now()
    closed = (
        (now + datetime.timedelta(hours=2)).strftime("%H:%M"),
        (now + datetime.timedelta(hours=3)).strftime("%H:%M"),
    )
    config = [Disk(tmp_path / "d0", 64 * VALUE * 16), Disk(tmp_path / "d1", 64 * VALUE * 16)]
    disks = Disks.open_all(config, threads=1)
    runner = JobRunner(disks, "http://127.0.0.1:1")  # type: ignore[arg-type]  (a DiskTier's get, put and delete)
    await runner.start()
    other = 1 - disks.home("jobs-index")  # ids of both kinds: placed away from the index, and wholly beside it
    away_ids = [f"j{i}" for i in range(64) if disks.home(f"job:j{i}") == other][:4]
    near_ids = [f"j{i}" for i in range(64) if other not in (disks.home(f"job:j{i}"), disks.home(f"job:j{i}:0"))][:4]
    jobs = [
        await runner.submit(Job(id=i, owner="ops", urls=[f"http://video.test/{i}"], window=closed))
        for i in away_ids + near_ids
    ]
    await runner.close()
    away = next(j.id for j in jobs if disks.home(f"job:{j.id}") != disks.home("jobs-index"))
    lost = config[disks.home(f"job:{away}")].path
    disks.close()
    lost.rename(tmp_path / "away")
    lost.write_bytes(b"")  # not a directory: that disk cannot be opened
    disks = Disks.open_all(config, threads=1)
    assert list(disks.failed) == [str(lost)]
    runner = JobRunner(disks, "http://127.0.0.1:1")  # type: ignore[arg-type]
    await runner.start()
    try:
        down = disks.home(f"job:{away}")
        here = {j.id for j in jobs if down not in (disks.home(f"job:{j.id}"), disks.home(f"job:{j.id}:0"))}
        assert here
        assert set(runner.jobs) == here
        new = next(
            f"new{i}" for i in range(100) if down not in (disks.home(f"job:new{i}"), disks.home(f"job:new{i}:0"))
        )
        await runner.submit(Job(id=new, owner="ops", urls=["http://video.test/new"], window=closed))
    finally:
        await runner.close()
        disks.close()
    lost.unlink()
    (tmp_path / "away").rename(lost)
    disks = Disks.open_all(config, threads=1)
    runner = JobRunner(disks, "http://127.0.0.1:1")  # type: ignore[arg-type]
    await runner.start()
    try:
        assert set(runner.jobs) == {j.id for j in jobs} | {new}
    finally:
        await runner.close()
        disks.close()


class _Counted(DiskTier):
    """A real disk tier that counts the bytes put under each kind of key."""

    written: Counter[str]

    async def put(self, key: str, value: bytes, lease: str | None = None, pinned: bool = False) -> bool:
        self.written[key.split(":")[0]] += len(value)
        return await super().put(key, value, lease, pinned)


async def test_a_job_writes_each_url_once_not_at_every_save(tmp_path: Path) -> None:
    """A job's record held all its URLs and was written again every 50 URLs done: a job of N URLs wrote N/50
    copies of them (a 38,000-URL job 0.8 GB, a 100,000-URL one 13 GB, each save also 40 ms of json.dumps on the
    loop). The URLs are written in parts, each once; the record keeps the job's progress alone."""
    origin = Origin()
    await origin.start()
    urls = [f"http://video.test/many/{i:04d}" for i in range(1000)]
    for url in urls:
        origin.put(url.removeprefix("http://video.test"), b"x")
    tier = _Counted(tmp_path, 64 * VALUE * 64, threads=1)
    tier.written = Counter()
    runner = JobRunner(tier, origin.url)
    await runner.start()
    try:
        job = await runner.submit(Job(id="", owner="ops", urls=urls, concurrency=16))
        await runner.until(lambda: job.state == "done")
    finally:
        await runner.close()
        await origin.stop()
    assert sum(origin.hits.values()) == 1000
    listed = len(json.dumps(urls))
    assert listed < tier.written["job"] < 2 * listed, (listed, tier.written)
    again = JobRunner(tier, origin.url)
    await again.start()
    try:
        assert (again.jobs[job.id].urls, again.jobs[job.id].state, again.jobs[job.id].done) == (urls, "done", 1000)
    finally:
        await again.close()
        tier.close()


class _Held(DiskTier):
    """A real disk tier whose writes of job records wait for `go` once `hold` is set."""

    hold: bool
    go: asyncio.Event

    async def put(self, key: str, value: bytes, lease: str | None = None, pinned: bool = False) -> bool:
        if self.hold and key.startswith("job:") and key.count(":") == 1:
            await self.go.wait()
        return await super().put(key, value, lease, pinned)


async def test_a_job_that_ended_as_the_runner_closed_is_done_after_a_restart(tmp_path: Path) -> None:
    """close() did not wait for the save of a job's end: a job seen as done came back as running after a restart
    (the suite saw it once, under load), its last URLs fetched again."""
    origin = Origin()
    await origin.start()
    origin.put("/one", b"x")
    tier = _Held(tmp_path, 64 * VALUE * 64, threads=1)
    tier.hold, tier.go = False, asyncio.Event()
    runner = JobRunner(tier, origin.url)
    await runner.start()
    try:
        job = await runner.submit(Job(id="", owner="ops", urls=["http://video.test/one"], concurrency=1))
        tier.hold = True  # the submit's own save went through
        await runner.until(lambda: job.state == "done")  # and its last save waits
        closing = asyncio.ensure_future(runner.close())
        finished, _ = await asyncio.wait([closing], timeout=0.5)
        assert not finished  # close() waits for that save
        tier.go.set()
        await closing
    finally:
        await origin.stop()
    again = JobRunner(tier, origin.url)
    await again.start()
    try:
        assert (again.jobs[job.id].state, again.jobs[job.id].done) == ("done", 1)
    finally:
        await again.close()
    assert origin.hits["/one"] == 1
