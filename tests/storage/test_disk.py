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

    def refuse_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(disk.os, "open", refuse_direct)
    tier = DiskTier(tmp_path, 64 * MiB, threads=1)
    try:
        value = _value(MiB + 1)
        assert await tier.put("k", value)
        assert await tier.get("k") == value
    finally:
        tier.close()
