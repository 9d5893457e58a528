"""The disk tier's checksum (storage.checksum) on real diskcache directories: a damaged value is never served, a
value an earlier version tagged with crc32 is still read, and a damaged one of those is dropped too."""

from __future__ import annotations

import os
import sqlite3
import zlib
from pathlib import Path

import diskcache
import pytest

from edgecache.storage.checksum import intact, tag_of
from edgecache.storage.disk import MIN_FILE_SIZE, DiskTier, lease_name
from edgecache.storage.slicedisk import SliceDisk

MiB = 2**20
VALUE = os.urandom(MiB)


def _damaged() -> list[bytes]:
    """The same length each: a bit flipped at either end or inside, a torn write's zeroed tail, a block repeated."""
    flipped = [bytearray(VALUE) for _ in range(3)]
    for damaged, at in zip(flipped, (0, MiB // 2 + 3, MiB - 1), strict=True):
        damaged[at] ^= 1
    torn = VALUE[: MiB - 4096] + bytes(4096)
    repeated = VALUE[:4096] + VALUE[:4096] + VALUE[8192:]
    return [bytes(d) for d in flipped] + [torn, repeated]


def test_the_tag_is_negative_and_checks_exact_bytes() -> None:
    tag = tag_of(VALUE)
    assert tag < 0  # told apart from a crc32 tag, which is never negative
    assert tag == tag_of(bytes(VALUE))
    assert intact(VALUE, tag)
    assert not any(intact(d, tag) for d in _damaged())
    assert not intact(VALUE[:-1], tag)
    assert intact(VALUE, None)  # untagged: taken as it is, as before


def test_a_crc32_tag_is_checked_as_crc32() -> None:
    assert intact(VALUE, zlib.crc32(VALUE))
    assert not any(intact(d, zlib.crc32(VALUE)) for d in _damaged())


def _file_of(directory: Path, key: str) -> Path:
    with sqlite3.connect(directory / "cache.db") as con:
        (filename,) = con.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    return directory / filename


@pytest.mark.parametrize("size", [MIN_FILE_SIZE - 1, MiB])
async def test_a_value_damaged_in_place_is_dropped(tmp_path: Path, size: int) -> None:
    """Same length, one bit changed, on disk (a file; or a small value in the database): dropped and missing."""
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        value = VALUE[:size]
        assert await tier.put("k", value)
        damaged = bytes([value[0] ^ 1]) + value[1:]
        if size >= MIN_FILE_SIZE:
            _file_of(tmp_path, "k").write_bytes(damaged)
        else:
            with sqlite3.connect(tmp_path / "cache.db") as con:
                con.execute("UPDATE Cache SET value = ? WHERE key = 'k'", (damaged,))
        assert await tier.get("k") is None
        assert await tier.contains(["k"]) == [False]
    finally:
        tier.close()


async def test_a_disk_an_earlier_version_wrote_with_crc32_tags_is_kept(tmp_path: Path) -> None:
    """Values an earlier version stored (crc32 in the tag column) are served after the upgrade; a damaged one is
    dropped, as before."""
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    tier.close()
    old = diskcache.Cache(str(tmp_path), disk=SliceDisk, disk_min_file_size=MIN_FILE_SIZE, eviction_policy="none")
    for key in ("whole", "damaged"):
        old.set(key, VALUE, tag=zlib.crc32(VALUE))
    old.close()
    damaged = bytearray(VALUE)
    damaged[12345] ^= 0x80
    _file_of(tmp_path, "damaged").write_bytes(damaged)
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)  # adopts both (values the index lacks)
    try:
        assert await tier.get("whole") == VALUE
        opened = await tier.open("whole")
        assert opened is not None
        assert not isinstance(opened, bytes)
        assert os.pread(opened.fileno(), MiB + 1, 0) == VALUE
        opened.close()
        assert await tier.open("damaged") is None
        assert await tier.contains(["whole", "damaged"]) == [True, False]
    finally:
        tier.close()


@pytest.mark.parametrize("read", ["get", "open"])
async def test_a_value_whose_file_is_gone_is_dropped_with_its_row(tmp_path: Path, read: str) -> None:
    """A row that outlived its file (a crash between an eviction's unlink and its commit) said the value was stored
    for good: contains() True, and a lease on it stopped there, as at a value stored. Read once, it goes."""
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        assert await tier.put("k", VALUE)
        _file_of(tmp_path, "k").unlink()
        assert await tier.contains(["k"]) == [True]  # the row, as the crash left it
        assert await (tier.get("k") if read == "get" else tier.open("k")) is None
        assert await tier.contains(["k"]) == [False]
        assert await tier.lease([lease_name("k")], 5.0) == 1  # a worker may fetch it again
        assert await tier.put("k", VALUE, lease=lease_name("k"))
        assert await tier.get("k") == VALUE
    finally:
        tier.close()


async def test_a_file_found_gone_drops_only_the_row_that_named_it(tmp_path: Path) -> None:
    """The value written again (by another process) between the read that found its file gone and the drop keeps
    its new row: only the row naming the file that is gone goes."""
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        assert await tier.put("k", VALUE)
        _file_of(tmp_path, "k").unlink()
        gone = tier._gone

        def written_again_first(key: str) -> None:  # another process's write lands between the read and the drop
            tier._cache.set(key, VALUE, tag=tag_of(VALUE), retry=True)
            gone(key)

        tier._gone = written_again_first  # type: ignore[method-assign]
        assert await tier.get("k") is None
        tier._gone = gone  # type: ignore[method-assign]
        assert await tier.get("k") == VALUE
    finally:
        tier.close()
