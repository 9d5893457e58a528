"""Several disks (storage/disks.py): where each key lives, the config that lists them, and a disk taken out of
service by an I/O failure or a failed probe, then brought back by revive() (a reload)."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import diskcache
import pytest

from edgecache.config import build
from edgecache.config.model import Disk
from edgecache.core.keys import PrimaryRecord, digest
from edgecache.errors import ConfigError, StorageError
from edgecache.storage.disk import DiskTier, lease_name
from edgecache.storage.disks import Disks, OutOfService, Placement, failure, full
from edgecache.storage.memory import MemoryTier
from edgecache.storage.store import Store, slice_name
from tests.samples import sample_value

MiB, GiB = 2**20, 2**30
SRV = [Disk(Path("/srv/cache1"), GiB), Disk(Path("/srv/cache2"), GiB), Disk(Path("/srv/cache3"), 2 * GiB)]


# --- placement ----------------------------------------------------------------------------------------------------


def test_placement_is_fixed_for_a_fixed_set_of_disks() -> None:
    # Golden: the same disks place the same keys on the same disk in every worker, node and release.
    place = Placement(SRV)
    got = {f"s:{i:04x}": place.home(f"s:{i:04x}") for i in range(12)}
    assert got == {
        "s:0000": 2, "s:0001": 1, "s:0002": 1, "s:0003": 2, "s:0004": 2, "s:0005": 1,
        "s:0006": 1, "s:0007": 2, "s:0008": 0, "s:0009": 1, "s:000a": 2, "s:000b": 2,
    }  # fmt: skip
    assert place.home(lease_name("s:0008")) == 0  # a lease lives with the value it guards
    assert Placement(SRV[:1]).home("s:0000") == 0


def test_placement_spreads_by_size() -> None:
    counts = Counter(Placement(SRV).home(f"k{i}") for i in range(4000))
    assert counts == {0: 1015, 1: 981, 2: 2004}  # sizes 1:1:2


def test_a_removed_disk_moves_only_its_own_keys() -> None:
    before, after = Placement(SRV), Placement([SRV[0], SRV[2]])
    keys = [f"k{i}" for i in range(4000)]
    moved = [k for k in keys if str(SRV[before.home(k)].path) != str([SRV[0], SRV[2]][after.home(k)].path)]
    assert moved == [k for k in keys if before.home(k) == 1]  # exactly the removed disk's keys, and all of them
    assert {after.home(k) for k in moved} == {0, 1}  # spread over the disks left


# --- what counts as a failed disk -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EIO, "Input/output error"),
        OSError(errno.EROFS, "Read-only file system"),
        sqlite3.OperationalError("disk I/O error"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        sqlite3.OperationalError("unable to open database file"),
        sqlite3.OperationalError("no such table: Cache"),  # another database where the disk's was
    ],
)
def test_failures_of_the_disk(exc: BaseException) -> None:
    wrapped = StorageError("disk tier")
    wrapped.__cause__ = exc
    assert failure(wrapped) is not None
    assert failure(exc) is not None


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOENT, "No such file or directory"),  # another worker's cull removed a file
        sqlite3.OperationalError("database is locked"),
        diskcache.Timeout("timed out"),
        ValueError("not I/O"),
    ],
)
def test_errors_of_one_operation(exc: BaseException) -> None:
    assert failure(exc) is None


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
    ],
)
def test_a_full_filesystem_is_no_failure_of_the_disk(exc: BaseException) -> None:
    """Its budget is lowered instead (Disks._full): taken out of service, every object on it was a miss."""
    wrapped = StorageError("disk tier")
    wrapped.__cause__ = exc
    assert (failure(wrapped), failure(exc)) == (None, None)
    assert full(wrapped)
    assert full(exc)


# --- config ---------------------------------------------------------------------------------------------------------

SITE = {"name": "a", "hosts": ["a.test"], "origins": ["http://127.0.0.1:1"]}
NOT_A_LIST = 'f.toml: cache.disks: expected an array of tables such as [{path = "/srv/cache1", size = "900GiB"}, ...]'


def problems(cache: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build({"cache": cache, "sites": [SITE]}, "f.toml", Path("/etc/edgecache"))
    return info.value.problems


def test_config_disks() -> None:
    cache = {"disks": [{"path": "/srv/cache1", "size": "1GiB"}, {"path": "cache2/", "size": "2GiB"}]}
    got = build({"cache": cache, "sites": [SITE]}, "f.toml", Path("/etc/edgecache")).cache
    assert got.disks == (Disk(Path("/srv/cache1"), GiB), Disk(Path("/etc/edgecache/cache2"), 2 * GiB))
    assert (got.dir, got.disk_bytes) == (Path("/srv/cache1"), 3 * GiB)  # the node's own files: on the first
    one = build({"cache": {"dir": "/srv/c", "disk": "1GiB"}, "sites": [SITE]}, "f.toml", Path("/etc")).cache
    assert one.all_disks == (Disk(Path("/srv/c"), GiB),)  # the single form is one disk


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ({"disks": []}, [NOT_A_LIST]),
        ({"disks": "/srv/a"}, [NOT_A_LIST]),
        (
            {"dir": "/srv/a", "disk": "1GiB", "disks": [{"path": "/srv/b", "size": "1GiB"}]},
            [
                "f.toml: cache.dir: give cache.disks, or cache.dir and cache.disk (one disk), not both",
                "f.toml: cache.disk: give cache.disks, or cache.dir and cache.disk (one disk), not both",
            ],
        ),
        (
            {"disks": [{"path": "/srv/a", "size": "1GiB"}, {"path": "/srv/a/", "size": "1GiB"}]},
            ["f.toml: cache.disks[1].path: '/srv/a' is also cache.disks[0]: give each disk once"],
        ),
        (
            {"disks": [{"path": "/srv/a", "size": "1GiB"}, {"path": "/srv/a/b", "size": "1GiB"}]},
            ["f.toml: cache.disks[1].path: '/srv/a/b' and cache.disks[0] ('/srv/a') are nested"],
        ),
        (
            {"disks": [{"path": "/srv/a/b", "size": "1GiB"}, {"path": "/srv/a", "size": "1GiB"}]},
            ["f.toml: cache.disks[1].path: '/srv/a' and cache.disks[0] ('/srv/a/b') are nested"],
        ),
        (
            {"disks": [{"path": "/srv/a", "size": "lots"}, {"path": "/srv/b", "size": "1MiB"}]},
            ["f.toml: cache.disks[0].size: 'lots' is not a size such as 256MiB"],
        ),
        (
            {"disks": [{"path": "/srv/a", "size": "1GiB"}, {"path": "/srv/b", "size": "1MiB"}]},
            ["f.toml: cache.disks[1].size: must hold at least 16 slices"],
        ),
        (
            {"disks": [{"path": "/srv/a"}, "/srv/b", {"path": "", "size": "1GiB", "weight": 2}]},
            [
                "f.toml: cache.disks[0].size: is required",
                "f.toml: cache.disks[1]: expected a table {path = ..., size = ...}",
                "f.toml: cache.disks[2].weight: unknown key",
                "f.toml: cache.disks[2].path: expected a directory path",
            ],
        ),
    ],
)
def test_config_disks_refused(cache: dict[str, Any], expected: list[str]) -> None:
    assert problems(cache) == expected


# --- a set of real disks ----------------------------------------------------------------------------------------------


def three(tmp_path: Path) -> list[Disk]:
    return [Disk(tmp_path / name, 64 * MiB) for name in ("d0", "d1", "d2")]


def metric(name: str, disk: Path) -> float:
    value = sample_value(name, {"disk": str(disk)})
    assert value is not None, name
    return value


def stored(disk: Disk) -> set[str]:
    """The keys the disk's own database holds, read apart from the node's tier."""
    tier = DiskTier(disk.path, disk.size, threads=1)
    try:
        return {str(k) for k in tier._cache.iterkeys()}
    finally:
        tier.close()


async def test_each_value_is_stored_on_its_home_disk(tmp_path: Path) -> None:
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    keys = [f"s:{i}" for i in range(40)]
    try:
        for key in keys:
            assert await disks.put(key, key.encode() * 1000)
        for key in keys:
            assert await disks.get(key) == key.encode() * 1000
        assert await disks.contains([*keys, "s:none"]) == [True] * 40 + [False]
        assert disks.directory == config[0].path
        assert disks.budget_bytes == 3 * 64 * MiB
    finally:
        disks.close()
    for n, disk in enumerate(config):
        expected = {k for k in keys if disks.home(k) == n}
        assert stored(disk) == expected
        assert expected  # spread (the disks' paths, and so where keys go, are tmp_path's: fixed keys are above)


async def test_a_disk_that_fails_is_out_of_service_at_once(tmp_path: Path) -> None:
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    try:
        keys = [f"s:{i}" for i in range(30)]
        for key in keys:
            await disks.put(key, b"v" * 100)
        bad = disks.home(keys[0])
        label = config[bad].path
        failures = metric("edgecache_disk_failures_total", label)
        tier = disks._slots[bad].tier
        assert tier is not None

        def readonly(*_: object, **__: object) -> None:
            raise sqlite3.OperationalError("attempt to write a readonly database")

        tier._cache.set = readonly  # type: ignore[method-assign]
        with pytest.raises(OutOfService, match="readonly database"):
            await disks.put(keys[0], b"new")
        assert metric("edgecache_disk_failures_total", label) == failures + 1
        assert metric("edgecache_disk_up", label) == 0
        assert disks.failed == {str(label): "SQLite: attempt to write a readonly database"}
        # Its keys are misses now, even those it could still read; the others are untouched.
        on_bad = [k for k in keys if disks.home(k) == bad]
        with pytest.raises(OutOfService):
            await disks.get(on_bad[0])
        assert await disks.contains(keys) == [disks.home(k) != bad for k in keys]
        fresh = [f"s:new{i}" for i in range(30)]  # not stored: a lease on the failed disk counts as taken
        assert await disks.lease([lease_name(k) for k in fresh], 5) == len(fresh)
        ok = next(k for k in keys if disks.home(k) != bad)
        assert await disks.get(ok) == b"v" * 100
        assert metric("edgecache_disk_failures_total", label) == failures + 1  # counted once
    finally:
        disks.close()


async def test_a_probe_fails_a_disk_whose_directory_went_away_and_revive_brings_it_back(tmp_path: Path) -> None:
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    try:
        key = next(f"s:{i}" for i in range(100) if disks.home(f"s:{i}") == 1)
        await disks.put(key, b"kept")
        moved = tmp_path / "elsewhere"
        config[1].path.rename(moved)
        config[1].path.mkdir()  # an empty directory where the disk was (as after an unmount)
        await disks._probe(disks._slots[1])
        assert disks.failed == {str(config[1].path): f"{config[1].path} is no longer the directory opened "
                                "(unmounted or replaced)"}  # fmt: skip
        assert await disks.contains([key]) == [False]
        assert await disks.revive() == [str(config[1].path)]  # a reload: the (empty) directory works
        assert disks.failed == {}
        assert metric("edgecache_disk_up", config[1].path) == 1
        assert await disks.get(key) is None
        config[1].path.rename(tmp_path / "replacement")
        moved.rename(config[1].path)  # the disk put back: a reload opens it again, with what it held
        await disks._probe(disks._slots[1])
        assert list(disks.failed) == [str(config[1].path)]
        assert await disks.revive() == [str(config[1].path)]
        assert await disks.get(key) == b"kept"
    finally:
        disks.close()


async def test_a_disk_that_cannot_be_opened_starts_out_of_service(tmp_path: Path) -> None:
    config = three(tmp_path)
    config[2].path.write_bytes(b"a file, not a directory")
    disks = Disks.open_all(config, threads=1)
    try:
        assert list(disks.failed) == [str(config[2].path)]
        key = next(f"s:{i}" for i in range(100) if disks.home(f"s:{i}") == 2)
        with pytest.raises(OutOfService):
            await disks.put(key, b"x")
        assert await disks.revive() == []  # still a file
        os.unlink(config[2].path)
        assert await disks.revive() == [str(config[2].path)]
        assert await disks.put(key, b"x")
    finally:
        disks.close()


async def test_a_record_on_a_failed_disk_never_finds_an_older_copy(tmp_path: Path) -> None:
    """A purged object's record on the failed disk: the default generation would find the copy stored before
    the purge (its metadata on another disk); a generation of its own finds nothing."""
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    store = Store(MemoryTier(MiB), disks)
    try:
        primary = next(f"p{i}" for i in range(100) if disks.home("v:" + digest(f"p{i}")) == 0)
        await store.put_record(primary, PrimaryRecord("purged-once"))
        store._records.clear()
        disks._slots[0].failed = "test"
        record = await store.get_record(primary)
        assert record.generation not in ("", "purged-once")
        assert await store.get_record(primary) == record  # the same while this process remembers it
    finally:
        disks.close()


async def test_open_files_of_a_failed_disk_are_served_no_more(tmp_path: Path) -> None:
    from edgecache.core.entry import ObjectMeta

    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    store = Store(MemoryTier(MiB), disks)
    meta = ObjectMeta(200, (), 64 * 1024 * 6, '"v1"', False, 1000.0, 1000.0, 64 * 1024, (), "t1")
    try:
        for i in range(6):
            assert await store.put_slice_disk("k", meta.slice_version, i, bytes([i]) * (64 * 1024))
            assert await store.open_slice("k", meta, i) is not None
        on = {i: disks.home(slice_name("k", meta.slice_version, i)) for i in range(6)}
        assert len(set(on.values())) >= 2
        bad = on[0]
        config[bad].path.rename(tmp_path / "elsewhere")  # the disk's directory goes away
        await disks._probe(disks._slots[bad])
        for i in range(6):  # only the files of the failed disk are gone from the open files
            assert (store.open_file("k", meta, i) is None) == (on[i] == bad)
    finally:
        store.close_files()
        disks.close()


async def test_an_unexpected_error_of_a_disk_takes_it_out(tmp_path: Path) -> None:
    """diskcache on a directory replaced under it failed its own assertion: that disk is out, not the request."""
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    try:
        key = next(f"s:{i}" for i in range(100) if disks.home(f"s:{i}") == 2)
        tier = disks._slots[2].tier
        assert tier is not None

        def broken(*_: object, **__: object) -> None:
            raise AssertionError("txn id")

        tier._cache.get = broken  # type: ignore[method-assign]
        with pytest.raises(OutOfService):
            await disks.get(key)
        assert disks.failed == {str(config[2].path): "AssertionError: txn id"}
    finally:
        disks.close()


async def test_a_lease_stops_at_a_value_already_stored(tmp_path: Path) -> None:
    """A worker that missed a slice a moment ago must not lease it again once another worker's fill has stored it
    and dropped its lease: it would fetch the slice a second time."""
    disks = Disks.open_all(three(tmp_path), threads=1)
    try:
        keys = [f"s:{i}" for i in range(12)]
        await disks.put(keys[5], b"v" * 100, lease=lease_name(keys[5]))  # stored, and its lease dropped
        assert await disks.lease([lease_name(k) for k in keys], 5) == 5
        assert await disks.contains([lease_name(k) for k in keys]) == [True] * 5 + [False] * 7
        assert await disks.lease([lease_name(k) for k in keys[5:]], 5) == 0
    finally:
        disks.close()


async def test_calls_waiting_on_a_hung_disk_end_when_it_is_taken_out(tmp_path: Path) -> None:
    """A hung device (a write that never returns) holds its tier's threads; every call behind it waits in their
    queue. The probe takes such a disk out of service (PROBE_TIMEOUT), and then those calls must end too: they held
    their requests, and a fill's origin connection, for as long as the device hung (for good: a request in flight
    when a disk hung was never answered)."""
    config = three(tmp_path)
    disks = Disks.open_all(config, threads=1)
    hung, entered = threading.Event(), threading.Event()
    try:
        keys = [k for k in (f"s:{i}" for i in range(100)) if disks.home(k) == 1][:2]
        await disks.put(keys[1], b"stored")
        tier = disks._slots[1].tier
        assert tier is not None
        real_set = tier._cache.set

        def hangs(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            hung.wait()
            return real_set(*args, **kwargs)

        tier._cache.set = hangs  # type: ignore[method-assign]
        write = asyncio.ensure_future(disks.put(keys[0], b"v" * 100))
        assert await asyncio.to_thread(entered.wait, 10)  # the write holds the disk's one thread
        read = asyncio.ensure_future(disks.get(keys[1]))  # queued behind it
        config[1].path.rename(tmp_path / "elsewhere")  # what the probe finds wrong (a hung one: its time limit)
        await disks._probe(disks._slots[1])
        assert list(disks.failed) == [str(config[1].path)]
        async with asyncio.timeout(5):
            with pytest.raises(OutOfService):
                await write
            with pytest.raises(OutOfService):
                await read
        assert await disks.get(next(k for k in (f"s:{i}" for i in range(100)) if disks.home(k) == 0)) is None
    finally:
        hung.set()
        disks.close()


async def test_a_lease_this_process_holds_is_its_own_to_take_again(tmp_path: Path) -> None:
    """A lease names its process: the workers coordinate through it, and the fills of one process through its table
    of fills. A reader that found a slice in neither tier nor in a fill of its process, and met a lease its own
    process holds (a fill that let the slice go, whose lease is being dropped, or one leased ahead), waited on the
    disk for a peer that was itself, up to LEASE_SECONDS a try. Its own lease is its to take again; another live
    process's is not."""
    disks = Disks.open_all(three(tmp_path), threads=1)
    try:
        keys = [lease_name(f"s:{i}") for i in range(6)]
        assert await disks.lease(keys[:3], 5) == 3
        assert await disks.lease(keys, 5) == 6  # this process's three, and three more
        other = keys[4]
        tier = disks._slots[disks.home(other)].tier
        assert tier is not None
        tier._cache.set(other, str(os.getppid()).encode(), expire=5)  # held by another process, alive
        assert await disks.lease(keys, 5) == 4
        assert await disks.contains(keys) == [True] * 6
    finally:
        disks.close()


async def test_a_lease_taken_for_an_owner_is_dropped_by_that_take_alone(tmp_path: Path) -> None:
    """The lease on an entry's origin request (proxy.revalidating) is taken per fill, each with its owner token. As
    the process's, a second fill of the same worker took it again and the first to end dropped it for both; and a
    holder slower than the lease's time dropped the one another had taken since it ran out."""
    disks = Disks.open_all(three(tmp_path), threads=1)
    try:
        lease = lease_name("r:entry")
        assert await disks.lease([lease], 5, "a") == 1
        assert await disks.lease([lease], 5, "b") == 0  # another fill of this process waits, as another's would
        assert await disks.lease([lease], 5, "a") == 1  # the same take, again
        await disks.let_go(lease, "b")  # not b's to drop
        assert await disks.contains([lease]) == [True]
        await disks.delete(lease)  # as its time running out does
        assert await disks.lease([lease], 5, "c") == 1
        await disks.let_go(lease, "a")  # the slow holder ends: the lease is c's now
        assert await disks.contains([lease]) == [True]
        await disks.let_go(lease, "c")
        assert await disks.contains([lease]) == [False]
    finally:
        disks.close()


async def test_a_lease_let_go_with_a_mark_is_not_taken_until_the_mark_expires(tmp_path: Path) -> None:
    """A holder that learned its origin answer is not stored marks the value its lease guards as it lets go
    (Leases.unstored_lately): nobody takes the lease, and so nobody waits on it, until the mark expires; the mark
    is an expiring row, never the eviction policy's (its budget and index are untouched), and it goes by itself."""
    disks = Disks.open_all(three(tmp_path), threads=1)
    try:
        lease = lease_name("r:entry")
        assert await disks.lease([lease], 5, "a") == 1
        await disks.let_go(lease, "a", mark=0.3)
        assert await disks.contains([lease, "r:entry"]) == [False, True]
        assert await disks.lease([lease], 5, "b") == 0  # the mark stops the take, and the take leaves no lease
        assert await disks.contains([lease]) == [False]
        tier = disks._slots[disks.home(lease)].tier
        assert tier is not None
        assert tier.policy.used_bytes == 0
        async with asyncio.timeout(5):  # the mark's time running out (polled: the clock, not another task)
            while await disks.lease([lease], 5, "b") == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await disks.contains([lease, "r:entry"]) == [True, False]
    finally:
        disks.close()


async def test_leases_on_disks_in_service_are_renewed_past_one_out_of_service(tmp_path: Path) -> None:
    """A fill renews the leases of the slices it is still bringing (revalidating.held_on), spread over the disks:
    one run on a disk out of service ended the renewal, and the leases after it, on disks in service, expired under
    a fill still bringing them (a reader in another worker then fetched those slices from the origin too)."""
    disks = Disks.open_all(three(tmp_path), threads=1)
    try:
        names = [lease_name(f"s:{i}") for i in range(100)]
        down = next(n for n in names if disks.home(n) == 0)
        up = next(n for n in names if disks.home(n) == 1)
        assert await disks.lease([up], 10.0) == 1
        disks._slots[0].failed = "test"
        await disks.renew([down, up], "", 1000.0)  # as Leases.renew: a disk out of service is no error here
        cache: Any = disks._slots[1].tier._cache  # type: ignore[union-attr]
        _, expires = cache.get(up, expire_time=True)
        assert expires - time.time() > 500  # renewed for 1000 s, not left at the 10 it was taken for
    finally:
        disks.close()
