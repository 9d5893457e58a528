"""The slice files a worker keeps open for the fast path's disk hits are bounded (store.OPEN_FILES): opening more
closes the least recently used, and a file a reader holds is closed when that reader lets it go, never under it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import pytest

from edgecache import server
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


async def test_open_files_are_checked_for_eviction_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server._close_evicted looks at every open slice file each second (an fstat each): on a filesystem whose
    fstat waits for a server (NFS, FUSE) or a sick device, that stopped the worker's loop, every client of it,
    for as long. The looks are made off the loop; what they find is closed on it."""
    monkeypatch.setattr(store_module, "OPEN_FILES", BOUND)
    monkeypatch.setattr(server, "CLOSE_EVICTED_SECONDS", 0)
    disks = Disks.open_all([Disk(tmp_path / "d0", 64 * MiB)], threads=1)
    store = Store(MemoryTier(MiB), disks)
    meta = ObjectMeta(200, (), SLICE * BOUND, '"v1"', False, 1000.0, 1000.0, SLICE, (), "t1")
    entered, release, waited, dropped = threading.Event(), threading.Event(), [], asyncio.Event()
    real_changed, real_drop = SliceFile.changed, SliceFile.drop

    def slow_changed(f: SliceFile) -> bool:  # the fstat of a file whose filesystem answers once released
        entered.set()
        waited.append(release.wait(5))
        return real_changed(f)

    def drop(f: SliceFile) -> None:
        real_drop(f)
        dropped.set()

    task = None
    try:
        files = []
        for i in range(BOUND):
            assert await store.put_slice_disk("k", meta.slice_version, i, bytes([i]) * SLICE)
            files.append(await store.open_slice("k", meta, i))
        evicted = files[3]
        assert isinstance(evicted, SliceFile)
        os.unlink(evicted._file.name)  # the disk tier let it go: its blocks stay taken while it is open
        monkeypatch.setattr(SliceFile, "changed", slow_changed)
        monkeypatch.setattr(SliceFile, "drop", drop)
        task = asyncio.ensure_future(server._close_evicted(store))
        assert await asyncio.to_thread(entered.wait, 10)
        release.set()  # only a loop that still turns gets here while a look waits
        async with asyncio.timeout(60):
            await dropped.wait()
        assert waited[:BOUND] == [True] * BOUND  # no look waited out its 5 s: the loop was free meanwhile
        assert [store.open_file("k", meta, i) is not None for i in range(BOUND)] == [i != 3 for i in range(BOUND)]
    finally:
        release.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store.close_files()
        disks.close()
