"""Where the disk tier's value files go (storage.slicedisk): 256 directories made once and kept, files of
diskcache's own two-level layout (an earlier version's) still read and deleted with their emptied directories."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import diskcache

from edgecache.storage.disk import MIN_FILE_SIZE, DiskTier
from edgecache.storage.slicedisk import SliceDisk

KiB = 1024
VALUE = 64 * KiB


def _value(n: int) -> bytes:
    return bytes([n % 251]) * VALUE


def _dirs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.val"))


async def test_files_go_in_one_level_of_directories_kept_across_evictions(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    try:
        for i in range(200):
            assert await tier.put(f"k{i}", _value(i))
        files = _files(tmp_path)
        assert len(files) == 10
        assert all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{28}\.val", f) for f in files), files
        dirs = _dirs(tmp_path)
        assert all(re.fullmatch(r"[0-9a-f]{2}", d) for d in dirs), dirs
        # Evicted values' directories stay (made once): 200 files in 256 buckets leave far more than 10 of them.
        assert len(dirs) > 100
        for i in range(190, 200):
            assert await tier.get(f"k{i}") == _value(i)
    finally:
        tier.close()


async def test_a_missing_directory_is_made_again(tmp_path: Path) -> None:
    """A directory gone meanwhile (emptied and removed by an earlier version's worker on the same disk)."""
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    try:
        assert await tier.put("a", _value(1))
        (bucket,) = _dirs(tmp_path)
        await tier.delete("a")
        os.rmdir(tmp_path / bucket)
        real_filename = tier._slice_disk.filename
        tier._slice_disk.filename = lambda *_: (bucket + "/" + "0" * 28 + ".val", "")  # type: ignore[method-assign]
        assert await tier.put("b", _value(2))
        tier._slice_disk.filename = real_filename  # type: ignore[method-assign]
        assert _files(tmp_path) == [bucket + "/" + "0" * 28 + ".val"]
        assert await tier.get("b") == _value(2)
    finally:
        tier.close()


async def test_files_of_diskcaches_layout_are_read_and_go_with_their_directories(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)
    tier.close()
    old = diskcache.Cache(str(tmp_path), disk=diskcache.Disk, disk_min_file_size=MIN_FILE_SIZE)
    old.set("old", _value(7))  # diskcache's own writer and names: "ab/cd/<28 hex>.val"
    old.close()
    with sqlite3.connect(tmp_path / "cache.db") as con:
        (name,) = con.execute("SELECT filename FROM Cache WHERE key = 'old'").fetchone()
    assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val", name)
    tier = DiskTier(tmp_path, 10 * VALUE, threads=1)  # adopts it (a value the index lacks)
    try:
        assert await tier.get("old") == _value(7)
        await tier.delete("old")
        assert _files(tmp_path) == []
        assert _dirs(tmp_path) == set()  # its two emptied directories went with it
    finally:
        tier.close()


def test_a_value_too_small_for_a_file_makes_none(tmp_path: Path) -> None:
    disk = SliceDisk(str(tmp_path), MIN_FILE_SIZE)
    try:
        assert disk.store(b"x" * (MIN_FILE_SIZE - 1), False)[2] is None  # kept in SQLite's row
        size, _, filename, _ = disk.store(b"x" * MIN_FILE_SIZE, False)
        assert filename is not None
        assert (size, (tmp_path / filename).read_bytes()) == (MIN_FILE_SIZE, b"x" * MIN_FILE_SIZE)
        disk.remove(filename)
        assert _files(tmp_path) == []
        assert len(_dirs(tmp_path)) == 1  # kept for the next file
    finally:
        disk.close_dir()
