"""The slice files a worker keeps open for the fast path's disk hits are bounded (store.OPEN_FILES): opening more
closes the least recently used, and a file a reader holds is closed when that reader lets it go, never under it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecache.config.model import Disk
from edgecache.core.entry import ObjectMeta
from edgecache.storage import store as store_module
from edgecache.storage.disks import Disks
from edgecache.storage.memory import MemoryTier
from edgecache.storage.slicefile import SliceFile
from edgecache.storage.store import Store

KiB, MiB = 2**10, 2**20
SLICE = 64 * KiB  # above the disk tier's MIN_FILE_SIZE: each slice is a file of its own
BOUND = 8


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_open_slice_files_are_bounded_and_a_held_one_is_closed_by_its_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "OPEN_FILES", BOUND)
    disks = Disks.open_all([Disk(tmp_path / "d0", 64 * MiB)], threads=1)
    store = Store(MemoryTier(MiB), disks)
    n = 3 * BOUND
    meta = ObjectMeta(200, (), SLICE * n, '"v1"', False, 1000.0, 1000.0, SLICE, (), "t1")
    try:
        for i in range(n):
            assert await store.put_slice_disk("k", meta.slice_version, i, bytes([i]) * SLICE)
        before = open_fds()
        first = await store.open_slice("k", meta, 0)
        assert isinstance(first, SliceFile)
        first.acquire()  # a reader holds it
        for i in range(1, n):
            assert isinstance(await store.open_slice("k", meta, i), SliceFile)
        assert len(store._files) == BOUND
        assert [store.open_file("k", meta, i) is not None for i in range(n)] == [False] * (n - BOUND) + [True] * BOUND
        # The bound's files and the held one are open, the others closed: the reader's fd was not taken from it.
        assert open_fds() - before == BOUND + 1
        assert os.pread(first.fd, 4, 0) == b"\x00" * 4
        first.release()
        assert open_fds() - before == BOUND
    finally:
        store.close_files()
        disks.close()
