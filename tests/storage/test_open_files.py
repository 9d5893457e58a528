"""The slice files a worker keeps open for the fast path's disk hits are bounded (store.OPEN_FILES): opening more
closes the least recently used, and a file a reader holds is closed when that reader lets it go, never under it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from edgecache import server
from edgecache.config.model import Disk
from edgecache.core.entry import ObjectMeta
from edgecache.storage import store as store_module
from edgecache.storage.disks import Disks
from edgecache.storage.memory import MemoryTier
from edgecache.storage.slicefile import SliceFile
from edgecache.storage.slicenames import slice_name
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
    for as long. The looks are made off the loop, and so are the closes of what they find (the next test)."""
    monkeypatch.setattr(store_module, "OPEN_FILES", BOUND)
    monkeypatch.setattr(server, "CLOSE_EVICTED_SECONDS", 0)
    disks = Disks.open_all([Disk(tmp_path / "d0", 64 * MiB)], threads=1)
    store = Store(MemoryTier(MiB), disks)
    meta = ObjectMeta(200, (), SLICE * BOUND, '"v1"', False, 1000.0, 1000.0, SLICE, (), "t1")
    entered, release, waited, dropped = threading.Event(), threading.Event(), [], asyncio.Event()
    real_changed, real_let_go = SliceFile.changed, SliceFile.let_go

    def slow_changed(f: SliceFile) -> bool:  # the fstat of a file whose filesystem answers once released
        entered.set()
        waited.append(release.wait(5))
        return real_changed(f)

    def let_go(f: SliceFile) -> BinaryIO | None:
        dropped.set()
        return real_let_go(f)

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
        monkeypatch.setattr(SliceFile, "let_go", let_go)
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


class _Closing:
    """A slice file's file object that notes the thread its close ran on (and closes it)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.closed_on = file, [0]

    def close(self) -> None:
        self.closed_on[0] = threading.get_ident()
        self.file.close()


async def test_the_files_of_evicted_slices_are_closed_off_the_event_loop(tmp_path: Path) -> None:
    """The last close of a file whose slice left the disk frees its blocks: on ext4 0.6 ms (median) to 39 ms, and
    exclusive tiers let a file go for each slice memory takes from disk (~50 a second), each closed by
    close_evicted. They were closed on the loop, which every client of the worker waited on; now off it, and
    still closed: its descriptor is free, and a file a reader holds is closed by that reader, not here."""
    disks = Disks.open_all([Disk(tmp_path / "d0", 64 * MiB)], threads=1)
    store = Store(MemoryTier(MiB), disks)
    meta = ObjectMeta(200, (), SLICE * 3, '"v1"', False, 1000.0, 1000.0, SLICE, (), "t1")
    try:
        files = []
        for i in range(3):
            assert await store.put_slice_disk("k", meta.slice_version, i, bytes([i]) * SLICE)
            f = await store.open_slice("k", meta, i)
            assert isinstance(f, SliceFile)
            files.append(f)
        closing = [_Closing(f._file) for f in files]
        for f, c in zip(files, closing, strict=True):
            f._file = c  # type: ignore[assignment]
        held = files[2].acquire()  # a reader of the third holds it
        for i in (0, 2):
            await disks.delete(slice_name("k", meta.slice_version, i))  # as a slice memory takes from disk
        assert await store.close_evicted() == 2
        loop_thread = threading.get_ident()
        assert closing[0].closed_on[0] not in (0, loop_thread)  # closed, off the loop
        assert closing[0].file.closed
        assert closing[1].closed_on[0] == 0  # still on disk: kept open
        assert store.open_file("k", meta, 1) is files[1]
        assert closing[2].closed_on[0] == 0  # held: open for its reader
        assert os.pread(held.fd, 4, 0) == b"\x02" * 4
        held.release()
        assert closing[2].closed_on[0] == loop_thread  # closed by its reader as it lets go
    finally:
        store.close_files()
        disks.close()
