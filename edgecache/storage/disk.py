"""The disk tier: diskcache (SQLite index + one file per large value), shared by every worker process.

Every diskcache call blocks (SQLite, file I/O), so each one runs in a small dedicated thread pool and never on
the event loop. Every value carries a checksum (diskcache's tag column: storage.checksum): a value changed
underneath the node is detected when read, dropped and reported missing, so it is fetched again.

Eviction is edgecache's own: S3-FIFO (storage.policy.DiskPolicy) over an index in diskcache's database
(storage.diskindex), and diskcache evicts nothing. A value's admission to the index, the evictions it decides and
the deletes of their rows commit together before the value is written, and their files go after (SliceDisk.
transaction). A hit writes nothing: hits are counted in memory per worker and written to the index in batches,
off the event loop, every HIT_FLUSH_SECONDS, when HIT_BATCH keys have hits, and at close. When the first process
opens a disk (none had it open: _hold), index rows whose value is gone are dropped and values the index lacks (one
written while a purge deleted its row) are adopted, oldest first, into the small FIFO.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import diskcache

from edgecache import metrics
from edgecache.errors import StorageError
from edgecache.storage.checksum import intact, tag_of
from edgecache.storage.diskindex import SQLiteQueues
from edgecache.storage.diskrecords import Records
from edgecache.storage.orphans import delete_orphans
from edgecache.storage.policy import GHOST, DiskPolicy
from edgecache.storage.slicedisk import SliceDisk

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKED_FILES = 65_536  # files whose checksum passed, remembered by inode, size and mtime
SQLITE_CACHE_PAGES = 256  # per connection (one per disk thread): 1 MiB
WAL_LIMIT = 4 * 2**20  # what SQLite's write-ahead log is cut back to each time it starts over
MIN_FILE_SIZE = 32 * 1024  # values at least this large get their own file; smaller ones live in SQLite
HIT_BATCH = 4096  # keys whose hits a worker holds for the index; past it, while a batch is being written, the
# hits of further keys are dropped: a counter is a hint, and the memory it takes must stay bounded
HIT_FLUSH_SECONDS = 1.0
LEASE = "l:"  # a lease's key is its value's, so prefixed
ORPHAN_MARGIN = 0.1  # seconds: more than file times' coarse clock lags (a jiffy)


def lease_name(name: str) -> str:
    """The lease that guards a fill of the value `name` (placed with it)."""
    return LEASE + name


def _hold(directory: Path) -> tuple[int, bool]:
    """Hold the disk for this tier's life: a lock on a file of its directory, shared by every process that has it
    open. The first to open it holds it alone (exclusively) until it has reconciled; later ones wait for that, then
    share it. The file's descriptor, and whether this process has the disk alone."""
    fd = os.open(directory / "edgecache.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks while the first one reconciles (the tier opens off the loop)
        return fd, False
    except BaseException:
        os.close(fd)
        raise
    return fd, True


def _holder(owner: str) -> bytes:
    """A lease's value: the process that holds it, and the take's `owner` token when it has one."""
    return f"{os.getpid()}:{owner}".encode() if owner else str(os.getpid()).encode()


def _alive(pid: int) -> bool:
    """Does process `pid` run (on this host: the workers sharing a disk are one node's)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def _start_all(pool: ThreadPoolExecutor, threads: int, each: Callable[[], object]) -> None:
    """Start every thread of the pool now, each running `each` once (it opens the thread's own SQLite connection).
    The executor starts them one by one as work arrives, and a start waits until the new thread runs, which takes
    the GIL: on the event loop, under load, that wait was seen at 319 ms. DiskTier is built off the loop
    (storage.disks opens disks on its own threads), so the wait is paid there.

    diskcache opens a thread's connection at its first use, and a connection holds its database open for writing
    for as long as it lives: one first opened after a read-only mount was put over the disk's directory holds that
    mount writable, so it can never be made read-only (test_disks' read-only disk failed so in CI)."""
    together = threading.Barrier(threads)

    def start() -> None:
        together.wait()
        each()

    for started in [pool.submit(start) for _ in range(threads)]:
        started.result()


class DiskTier(Records):
    def __init__(self, directory: Path, budget_bytes: int, threads: int = 8) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.budget_bytes = budget_bytes
        self._cache = diskcache.Cache(
            str(directory),
            timeout=10,
            size_limit=budget_bytes,
            eviction_policy="none",  # ours decides (self.policy); diskcache only culls expired leases
            cull_limit=16,
            statistics=False,
            disk=SliceDisk,
            disk_min_file_size=MIN_FILE_SIZE,
            # SQLite keeps a page cache per connection, and diskcache opens one per thread: at its default (8,192
            # pages, 32 MiB) the disk threads' caches grew to most of the process's RSS over the budget. Index
            # reads go through the memory map, which is the kernel's page cache, shared by every worker.
            sqlite_cache_size=SQLITE_CACHE_PAGES,
            # The write-ahead log grows while readers (every disk thread of every worker) keep checkpoints from its
            # end, and a log that starts over keeps the file's largest size unless this cuts it back.
            sqlite_journal_size_limit=WAL_LIMIT,
        )
        slice_disk = self._cache.disk
        assert isinstance(slice_disk, SliceDisk)
        self._slice_disk = slice_disk
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="disk")
        _start_all(self._pool, threads, lambda: self._cache._con)
        self._lock = threading.Lock()
        self._checked: OrderedDict[str, tuple[int, int, int]] = OrderedDict()  # key -> (inode, size, mtime)
        self.errors = 0
        self._queues = SQLiteQueues(lambda: self._cache._con)
        self.policy = DiskPolicy(budget_bytes, self._queues)
        self._hits: dict[str, int] = {}  # key -> hits not yet written to the index
        self._waiting: set[asyncio.Future[Any]] = set()  # calls of _run not answered yet
        self.abandoned: str | None = None  # why calls stop waiting for this tier's threads (abandon)
        self._flushing = False
        self._hits_lost = False  # the last batch of hits failed to be written (logged when it began)
        self._timer: asyncio.TimerHandle | None = None
        self._held, alone = _hold(directory)
        try:
            with self._slice_disk.transaction(self._cache):
                self._queues.create()
                self._reconcile(alone)
        except BaseException:
            os.close(self._held)
            self._slice_disk.close_dir()
            raise
        if alone:
            before = time.time() - ORPHAN_MARGIN  # while no other process can write yet
            fcntl.flock(self._held, fcntl.LOCK_SH)  # now others may open it too
            # Off the start (a walk of every file), on a thread of its own: no SQLite connection of diskcache's.
            threading.Thread(target=delete_orphans, args=(directory, before), name="disk-orphans", daemon=True).start()

    def _reconcile(self, alone: bool) -> None:
        """The index and the values agree again: rows without a value go, values without a row are adopted (they
        are intact, checksummed bytes the node paid for), and the budget (perhaps a new one) holds. The rows are
        compared one by one only when their counts differ (1,000,000 slices: 4.8 s against 0.x s), and only by a
        process `alone` with the disk: a row another process admitted has no value until its write ends, and
        dropping it there made that write take itself for purged and delete its own value."""
        if not alone or self._queues.agrees():
            self._delete_values(self.policy.resize(self.budget_bytes))
            return
        for key in self._queues.unstored():
            self._queues.drop(key)
        for key, size in self._queues.unindexed():
            self._delete_values(self.policy.admit(key, size))
        self._delete_values(self.policy.resize(self.budget_bytes))

    def _delete_values(self, keys: list[str]) -> None:
        """Delete evicted values: call it in the transaction that evicted them from the index."""
        for key in keys:
            self._cache.delete(key, retry=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self.abandoned is not None:
            raise StorageError(f"disk tier: {self.abandoned}")
        waiting = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        self._waiting.add(waiting)
        try:
            return await waiting
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            self.errors += 1
            raise StorageError(f"disk tier: {exc}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.abandoned is None or (task is not None and task.cancelling()):
                raise  # the caller's own cancellation
            raise StorageError(f"disk tier: {self.abandoned}") from None
        finally:
            self._waiting.discard(waiting)

    def abandon(self, why: str) -> None:
        """The disk is out of service: every call waiting for its threads ends now with a StorageError, and so does
        every later one. A hung device (a write that never returns) holds the threads, and the calls queued behind
        them would wait as long: a request in flight when its disk hung was never answered. Those queued are dropped
        (a cancelled call that has not started never runs); one running is left to its thread."""
        self.abandoned = why
        for waiting in list(self._waiting):
            waiting.cancel()

    async def get(self, key: str) -> bytes | None:
        """The value, if present and intact: one whose checksum fails is deleted and reported missing."""
        value = await self._run(lambda: self._get_checked(key))
        if value is not None:
            self.note_hit(key)
        return value

    def _get_checked(self, key: str) -> bytes | None:
        value, tag = self._cache.get(key, None, tag=True, retry=True)
        if not isinstance(value, bytes):
            self._gone(key)
            return None
        if not intact(value, tag):
            self._corrupt(key)
            return None
        return value

    async def open(self, key: str) -> BinaryIO | bytes | None:
        """An open file holding the value (large values), the value itself (small ones), or None. The checksum is
        checked here, once, so the caller may then read the file in pieces without checking."""
        value = await self._run(lambda: self._open_checked(key))
        if value is not None:
            self.note_hit(key)
        return value

    def note_hit(self, key: str) -> None:
        """A hit on `key`: counted here, on the loop, and written to the index with the next batch."""
        hits = self._hits
        if key in hits:
            hits[key] += 1
        elif len(hits) < HIT_BATCH:
            hits[key] = 1
        if len(hits) >= HIT_BATCH:
            self._flush_hits()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HIT_FLUSH_SECONDS, self._flush_hits)

    def _flush_hits(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing or not self._hits:
            return  # the batch in flight ends by looking again
        hits, self._hits = self._hits, {}
        self._flushing = True
        self._pool.submit(self._write_hits, hits).add_done_callback(lambda _: self._flushed())

    async def flush_hits(self) -> None:
        """Write the hits counted so far to the index now, and return once they are in it."""
        hits, self._hits = self._hits, {}
        if hits:
            await self._run(lambda: self._write_hits(hits))

    def _flushed(self) -> None:
        self._flushing = False

    def _write_hits(self, hits: dict[str, int]) -> None:
        """One transaction for a batch of hits (in a disk thread). A batch that fails is lost: counters are hints."""
        try:
            with self._slice_disk.transaction(self._cache):
                self._queues.record_hits(hits.items())
        except (OSError, sqlite3.Error) as exc:
            self.errors += 1
            if not self._hits_lost:  # said once until a batch is written again (a full filesystem lasts)
                log.warning("disk tier: %d hits not recorded: %s", len(hits), exc)
            self._hits_lost = True
        else:
            self._hits_lost = False

    def _open_checked(self, key: str) -> BinaryIO | bytes | None:
        value, tag = self._cache.get(key, None, read=True, tag=True, retry=True)
        if value is None:
            self._gone(key)
            return None
        if isinstance(value, bytes):
            return self._get_checked(key)
        if not isinstance(value, io.BufferedReader):
            return None
        st = os.fstat(value.fileno())
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            checked = self._checked.get(key) == seen
        if checked:  # the same file, unchanged since its checksum was checked: no need to read it all again
            return value
        if not intact(value.read(), tag):
            value.close()
            self._corrupt(key)
            return None
        with self._lock:
            self._checked[key] = seen
            if len(self._checked) > CHECKED_FILES:
                self._checked.popitem(last=False)
        return value

    def _corrupt(self, key: str) -> None:
        log.warning("disk tier: %s failed its checksum: dropped", key)
        metrics.DISK_CORRUPT.inc()
        self._forget(key)

    def _gone(self, key: str) -> None:
        """A read found no value. If its row names a file that is gone (an rm by hand; a crash between an unlink and
        its commit, before SliceDisk.transaction), the row goes: it said the value was stored (others waited: 502)."""
        if (filename := self._slice_disk.vanished()) is None:
            return
        with self._slice_disk.transaction(self._cache):
            if self._queues.filename_of(key) != filename:
                return  # deleted or written again by another process meanwhile (file names are never reused)
            self._cache.delete(key, retry=True)
            self.policy.remove(key)
        log.warning("disk tier: %s: its file %s is gone: dropped", key, filename)
        metrics.DISK_CORRUPT.inc()

    async def put(
        self, key: str, value: bytes, lease: str | None = None, pinned: bool = False, lent: bool = False
    ) -> bool:
        """Store `value`; then drop `lease` (taken by lease()), so processes waiting on it find the value.

        `pinned`: the policy never evicts it (an admin job's record; a primary record that hides older copies goes
        through put_record, bounded); it is outside the budget, so keep such values few and small. `lent`: a value
        this disk gave up to the memory tier on a hit, written back (policy.S3FIFOPolicy.admit).
        """
        return await self._run(lambda: self._write(key, value, lease, pinned, lent))

    def _write(self, key: str, value: bytes, lease: str | None, pinned: bool, lent: bool = False) -> bool:
        # Admitted first, in its own transaction: the budget holds before the bytes land, and what the admission
        # evicts is deleted before the file is written, so a disk sized to its filesystem never meets ENOSPC for
        # want of the room eviction makes (the one-transaction order, file first, did: tests/e2e/test_crash.py).
        # A hit on the value always finds its row. No worker waits on the file's write; a crash before it leaves a
        # row without a value, which the index drops at start.
        with self._slice_disk.transaction(self._cache):
            if pinned:
                self.policy.remove(key)
                self._queues.pin(key, len(value))
                evicted = []
            else:
                evicted = self.policy.admit(key, len(value), lent)
            self._delete_values(evicted)  # with `key` itself when too big: its old value goes too
        stored = key not in evicted
        try:
            if stored:
                # The checksum is computed in the disk thread, like the write, and kept in diskcache's tag column.
                self._cache.set(key, value, tag=tag_of(value), retry=True)
                # Deleted (a purge) or evicted (another write's admission, which leaves a ghost row) between
                # admission and write: no orphan. A ghost's value was kept, unindexed, past the budget for good.
                found = self._queues.find(key)
                if found is None or found[0] == GHOST:
                    self._forget(key)
                    stored = False
        except BaseException:
            self._forget(key)
            raise
        finally:
            if lease is not None:
                self._cache.delete(lease, retry=True)
        return stored

    async def claim(self, key: str, value: bytes, keep: Callable[[bytes], bool]) -> bytes:
        """Store `value` as put() does, unless the value stored now is one `keep` accepts; what is stored after. The
        look and the write are one transaction: of two processes claiming the same key at once, the second sees
        the first's value."""

        def run() -> bytes:
            with self._slice_disk.transaction(self._cache):
                current = self._get_checked(key)
                if current is not None and keep(current):
                    return current
                self._write(key, value, None, False)
            return value

        return await self._run(run)

    async def lease(self, keys: list[str], seconds: float, owner: str = "") -> int:
        """Take leases on `keys` in order, stopping at the first another process holds or whose value is stored
        already; how many were taken. `owner`: the take's own token (let_go), else the process's.

        The value is looked for once its lease is taken: a fill stores the value before it drops the lease, so a
        lease taken after that drop finds the value, and one taken before it cannot be (the fill holds it). Looked
        for first, a value stored between the look and the lease was fetched twice.

        A lease this process holds is taken again (for as long again): its fills coordinate through its table of
        fills, and a reader that found none fetching the value would wait on the disk for itself. Not one another
        take of this process holds under its own `owner`: that one waits for it as another process's would."""

        def take() -> int:
            holder = _holder(owner)
            for n, key in enumerate(keys):
                if self._cache.get(key, None, retry=True) == holder:
                    self._cache.set(key, holder, expire=seconds, retry=True)
                elif not self._cache.add(key, holder, expire=seconds, retry=True) and (
                    self._leased(key) or not self._cache.add(key, holder, expire=seconds, retry=True)
                ):
                    return n
                if key.removeprefix(LEASE) in self._cache:
                    self._cache.delete(key, retry=True)
                    return n
            return len(keys)

        return await self._run(take)

    async def delete(self, key: str) -> None:
        await self._run(lambda: self._forget(key))

    async def let_go(self, lease: str, owner: str, mark: float = 0.0) -> None:
        """Drop `lease` if the take of `owner` (lease()) still holds it: not one that expired and was taken since.
        `mark`: first store the value it guards, empty, for that many seconds (a lease that guards no value of its
        own, storage.leases.unstored_lately): nobody takes the lease meanwhile."""

        def drop() -> None:
            with self._slice_disk.transaction(self._cache):
                if mark > 0:  # expiring, so not the policy's (diskindex.unindexed): culled as leases are
                    self._cache.set(lease.removeprefix(LEASE), b"", expire=mark, retry=True)
                if self._cache.get(lease, None, retry=True) == _holder(owner):
                    self._cache.delete(lease, retry=True)

        await self._run(drop)

    async def renew(self, leases: list[str], owner: str, seconds: float) -> None:
        """Hold each of `leases` `seconds` from now that the take of `owner` (lease()) holds still: never one let go,
        or one that expired and was taken since (a take the lease's time outlived goes on without it)."""

        def extend() -> None:
            with self._slice_disk.transaction(self._cache):
                for lease in (x for x in leases if self._cache.get(x, None, retry=True) == _holder(owner)):
                    self._cache.set(lease, _holder(owner), expire=seconds, retry=True)

        await self._run(extend)

    async def contains(self, keys: list[str]) -> list[bool]:
        """Which keys are stored; a lease counts only while its process lives (_leased)."""
        return await self._run(lambda: [self._leased(k) if k.startswith(LEASE) else k in self._cache for k in keys])

    def _leased(self, lease: str) -> bool:
        """Is `lease` taken by a process alive? One a dead process held (a worker killed mid-fill) is deleted: the
        others waiting on it fetch the value now, not once it expires."""
        holder = self._cache.get(lease, None, retry=True)
        if not isinstance(holder, bytes):
            return False
        pid = holder.partition(b":")[0]  # (_holder)
        if not pid.isdigit() or _alive(int(pid)):  # (a lease of a version before holders were named: b"")
            return True
        with self._slice_disk.transaction(self._cache):  # (a write lock, for a dead one only) not one taken since
            if self._cache.get(lease, None, retry=True) == holder:
                self._cache.delete(lease, retry=True)
        return False

    async def volume(self) -> int:
        return await self._run(self._cache.volume)

    async def shrink(self, share: float) -> int:
        """The filesystem is full below the budget: the budget becomes `share` of what is held now, and what is over
        it is deleted. The new budget."""
        return await self._run(lambda: self._rebudget(lambda used: min(self.budget_bytes, int(used * share))))

    async def grow(self, limit: int, share: float) -> int:
        """The filesystem has room again after shrink(): the budget becomes `share` of what the cache could take
        there now (what it holds and the room left), `limit` at most, never less than it is. The new budget."""
        st = await self._run(lambda: os.fstatvfs(self._slice_disk.dir_fd))  # the filesystem of the directory as opened
        room = st.f_bavail * st.f_frsize
        return await self._run(
            lambda: self._rebudget(lambda used: max(self.budget_bytes, min(limit, int((used + room) * share))))
        )

    def _rebudget(self, budget_of: Callable[[int], int]) -> int:
        with self._slice_disk.transaction(self._cache):
            self.budget_bytes = budget_of(self.policy.used_bytes)
            self._delete_values(self.policy.resize(self.budget_bytes))
        return self.budget_bytes

    def close(self) -> None:
        """Write the hits not yet in the index, then close (blocking: the disk threads finish first)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        hits, self._hits = self._hits, {}
        if hits:
            self._pool.submit(self._write_hits, hits)
        self._pool.shutdown(wait=True)
        self._cache.close()
        self._slice_disk.close_dir()
        os.close(self._held)  # and the lock with it
