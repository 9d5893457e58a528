"""The disk tier's own writer: exact bytes at every size around the O_DIRECT alignment, and no file left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecache.errors import StorageError
from edgecache.storage import disk
from edgecache.storage.disk import MIN_FILE_SIZE, DiskTier

MiB = 2**20


def _value(n: int) -> bytes:
    # Every byte value, newlines included: diskcache's own writer split on them.
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def _value_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.val")]


@pytest.mark.parametrize("size", [MIN_FILE_SIZE - 1, MIN_FILE_SIZE, MIN_FILE_SIZE + 1, MiB - 1, MiB, MiB + 4095])
async def test_values_round_trip_exactly(tmp_path: Path, size: int) -> None:
    tier = DiskTier(tmp_path, 64 * MiB, threads=2)
    try:
        value = _value(size)
        assert await tier.put("k", value)
        assert await tier.get("k") == value
        opened = await tier.open("k")  # what the fast path serves from, by offset
        assert opened is not None
        got = opened if isinstance(opened, bytes) else os.pread(opened.fileno(), size + 1, 0)
        assert got == value
        files = _value_files(tmp_path)
        if size >= MIN_FILE_SIZE:  # its own file, exactly as long as the value (no O_DIRECT padding left)
            assert [f.stat().st_size for f in files] == [size]
        else:
            assert files == []
        if not isinstance(opened, bytes):
            opened.close()
    finally:
        tier.close()


async def test_a_failed_write_leaves_no_file_and_no_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk.os, "posix_fallocate", no_space)
    try:
        with pytest.raises(StorageError, match="No space left"):
            await tier.put("k", _value(MiB))
        assert _value_files(tmp_path) == []
        assert await tier.get("k") is None
    finally:
        tier.close()


async def test_filesystems_without_o_direct_still_get_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_direct(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(disk.os, "open", refuse_direct)
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        value = _value(MiB + 1)
        assert await tier.put("k", value)
        assert await tier.get("k") == value
    finally:
        tier.close()


async def test_lazy_metadata_writes_skip_only_the_same_copy_within_seconds(tmp_path: Path) -> None:
    from dataclasses import replace

    from edgecache.core.entry import ObjectMeta
    from edgecache.storage.memory import MemoryTier
    from edgecache.storage.store import LAZY_META_SECONDS, Store

    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    store = Store(MemoryTier(MiB), tier)
    fields = (("ETag", '"v1"'), ("Cache-Control", "max-age=60"), ("Date", "Mon, 30 Nov 2026 10:00:00 GMT"))
    meta = ObjectMeta(200, fields, 10, '"v1"', False, 1000.0, 1000.0, MiB, (), "t1")

    async def on_disk() -> ObjectMeta | None:
        store._meta.clear()  # read it back from the disk tier, not from memory
        return await store.get_meta("k")

    try:
        await store.put_meta("k", meta, lazy=True)  # never written: written
        assert await on_disk() == meta
        later = replace(meta, response_time=1001.0, headers=(*fields[:2], ("Date", "x")))
        await store.put_meta("k", later, lazy=True)  # the same copy, a second later: skipped
        assert await on_disk() == meta
        assert store.peek_meta("k") == meta  # (the read above put the disk's copy back in memory)
        changed = replace(later, headers=(fields[0], ("Cache-Control", "max-age=1"), fields[2]))
        await store.put_meta("k", changed, lazy=True)  # a field changed: written
        assert await on_disk() == changed
        much_later = replace(changed, response_time=changed.response_time + LAZY_META_SECONDS)
        await store.put_meta("k", much_later, lazy=True)  # old enough: written
        assert await on_disk() == much_later
        new_copy = replace(much_later, token="t2", response_time=much_later.response_time + 1)
        await store.put_meta("k", new_copy, lazy=True)  # another copy: written
        assert await on_disk() == new_copy
        await store.put_meta("k", replace(new_copy, response_time=new_copy.response_time + 1))  # not lazy: written
        assert (await on_disk()) != new_copy
    finally:
        tier.close()


async def test_fewer_metadata_entries_drop_the_least_used_and_the_disk_still_has_them(tmp_path: Path) -> None:
    from edgecache.core.entry import ObjectMeta
    from edgecache.core.keys import PrimaryRecord
    from edgecache.storage.memory import MemoryTier
    from edgecache.storage.store import Store

    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    store = Store(MemoryTier(MiB), tier, meta_entries=8)
    metas = {f"k{i}": ObjectMeta(200, (("ETag", f'"{i}"'),), 10, f'"{i}"', False, 1.0, 1.0, MiB) for i in range(8)}

    def held() -> tuple[list[str], list[str]]:
        return [k for k in metas if store.peek_meta(k)], [k for k in metas if store.peek_record(f"p{k}")]

    try:
        for key, meta in metas.items():
            await store.put_meta(key, meta)
            await store.put_record(f"p{key}", PrimaryRecord(f"g{key}"))
        store.touch_meta("k1", "pk1")  # a hit: recently used
        store.set_meta_entries(3)
        assert held() == (["k1", "k6", "k7"], ["k1", "k6", "k7"])
        assert await store.get_meta("k0") == metas["k0"]  # from the disk tier, and now kept at hand again
        assert await store.get_record("pk0") == PrimaryRecord("gk0")
        assert held() == (["k0", "k1", "k7"], ["k0", "k1", "k7"])
        store.set_meta_entries(8)
        assert await store.get_meta("k2") == metas["k2"]
        assert held()[0] == ["k0", "k1", "k2", "k7"]
    finally:
        tier.close()


async def test_every_disk_thread_has_its_database_open_from_the_start(tmp_path: Path) -> None:
    """A disk thread's SQLite connection, opened at its first use, would hold the database open for writing through
    whatever mount was over the directory then: a read-only mount put over a failing disk could never be made
    read-only. Each is opened when the tier opens."""
    db = str(tmp_path / "cache.db")

    def opened() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == db)

    before = opened()
    tier = DiskTier(tmp_path, 64 * MiB, threads=3)
    try:
        assert opened() - before >= 3  # the three threads' (and the opening thread's, while it lives)
        await tier.put("k", _value(10))
        await tier.get("k")
        during = opened()
        assert during - before >= 3
    finally:
        tier.close()


async def test_a_directory_removed_between_its_mkdir_and_the_open_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diskcache removes a value's directories once empty (Disk.remove: os.removedirs), and a worker of an earlier
    version on the same disk still does. When that took the directory between the writer's mkdir and its open,
    the open failed with ENOENT and, outside a retry, the slice was not stored (seen under load with diskcache's
    two levels: "No such file or directory: 'cf/8c'"). Here the other process's removal happens at exactly that
    moment, once."""
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    mkdir = os.mkdir
    removed: list[str] = []

    def racing_mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        mkdir(path, mode, dir_fd=dir_fd)
        if not removed:
            os.rmdir(path, dir_fd=dir_fd)  # another worker's removedirs of the directory it emptied
            removed.append(path)

    monkeypatch.setattr(disk.os, "mkdir", racing_mkdir)
    try:
        value = _value(MiB)
        assert await tier.put("k", value)
        assert len(removed) == 1
        assert await tier.get("k") == value
        assert tier.errors == 0
    finally:
        monkeypatch.undo()
        tier.close()


async def test_the_write_ahead_log_shrinks_back_once_its_readers_let_it(tmp_path: Path) -> None:
    """SQLite's write-ahead log grows while readers keep a checkpoint from reaching its end (many disk threads in
    every worker read all the time) and then stayed at its largest size for good: 11.7 MB on a 64 MiB disk under
    load, where the README gives the index up to 4 MiB beyond its rows. Once readers let a checkpoint finish, the
    log starts over and is cut back to 4 MiB (journal_size_limit)."""
    import sqlite3

    tier = DiskTier(tmp_path, 256 * MiB, threads=1)
    wal = tmp_path / "cache.db-wal"
    try:
        reader = sqlite3.connect(tmp_path / "cache.db")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM Cache").fetchone()  # a snapshot no checkpoint may pass
        for i in range(400):
            await tier.put(f"m{i}", _value(20_000))  # kept in SQLite itself (under MIN_FILE_SIZE): 8 MB of log
        assert wal.stat().st_size > 6 * MiB
        reader.rollback()
        reader.close()
        for i in range(20):
            await tier.put(f"n{i}", _value(20_000))
        assert wal.stat().st_size <= 4 * MiB
        assert await tier.get("m7") == _value(20_000)
    finally:
        tier.close()


def test_the_metadata_a_store_keeps_at_hand_is_bounded_by_bytes(tmp_path: Path) -> None:
    """A Store's tables of metadata, records and write marks were bounded by their count of entries alone (16,384
    each): long keys took a worker far past its memory budget (8 KB URLs: 112.7 MiB of RSS against 80, for 36 s,
    until the RSS bound lowered the count). They hold their budget of bytes together now, keys included, measured
    here as Python allocates them."""
    import tracemalloc

    from edgecache.core.entry import ObjectMeta
    from edgecache.core.keys import PrimaryRecord
    from edgecache.storage.memory import MemoryTier
    from edgecache.storage.store import Store

    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    store = Store(MemoryTier(MiB), tier)
    fields = (("ETag", '"v1"'), ("Cache-Control", "max-age=60"), ("Date", "Mon, 30 Nov 2026 10:00:00 GMT"))
    try:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4000):
            primary = f"{i:08d}|video.test|/" + "u" * 8000  # an 8 KB URL
            key = primary + "\n"
            meta = ObjectMeta(200, fields, 10, '"v1"', False, 1000.0, 1000.0, MiB, (), f"t{i}")
            store.remember_record(primary, PrimaryRecord("g", ("Accept-Encoding",)))
            store.remember_meta(key, meta)
            store._wrote(key, meta)
            del primary, key, meta
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert held <= 16 * MiB * 1.1, held  # store.META_BYTES, and what its estimates of entries may miss
        assert store.held.held <= 16 * MiB
        assert store.peek_meta(f"{3999:08d}|video.test|/" + "u" * 8000 + "\n") is not None  # the newest is kept
        assert len(store._meta) < 4000
    finally:
        tier.close()
