"""The disk tier over several disks (cache.disks): one DiskTier per disk, each value on one of them.

Placement: a value lives on the disk its key scores highest on by weighted rendezvous hashing (core.ring, the
rule that places objects on nodes), weighted by the disks' sizes. It is stable across restarts and workers, an
object's slices spread over the disks, and a disk added or removed in the config moves only the keys it takes or
had. A lease lives on the disk of the value it guards, so a fill's write and the drop of its lease stay together.

Failure: an I/O error that says the disk itself is broken (EIO, read-only, gone; SQLite's "disk I/O error",
"attempt to write a readonly database") takes it out of service at once, in the worker that saw it, and
a probe every PROBE_SECONDS (its directory still the one opened, a file can be written) takes it out in every
worker within that time, also when nothing wrote to it. It is counted, its edgecache_disk_up goes to 0 and the
worker logs it once. Its keys are then misses, fetched from origin and not stored on another disk: the other
disks keep their budgets for their own objects, and no key ever has a second copy that could be found in place
of the newer one (workers see a failure at different moments, and a disk may come back).

A full filesystem is no failure: the write is lost and the disk's budget lowered below what it holds (_full),
then raised again as far as the filesystem's room allows, GROW_AFTER seconds after it last changed (_grow).

A failed disk stays out of service until a reload (SIGHUP) finds its directory working again: a human replaced
the disk or freed the space, so it does not flap in and out on a probe's luck. It comes back with what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from edgecache import metrics
from edgecache.config.model import Disk
from edgecache.core.ring import Member, Ring
from edgecache.errors import StorageError
from edgecache.storage import reserve
from edgecache.storage.disk import LEASE, DiskTier

if TYPE_CHECKING:
    from edgecache.metricturn import TurnCounter as Counter

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_SECONDS = 1.0  # how often each worker checks each disk in service
PROBE_TIMEOUT = 10.0  # a probe that takes longer fails the disk (a hung device)

# errno values that mean the device or its filesystem failed, not the one operation.
_FAILED_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.ESTALE, errno.ENOTCONN})
# SQLite's messages for the same (it reports no errno).
_FAILED_SQLITE = (
    "disk i/o error",
    "readonly database",
    "unable to open database file",
    "database disk image is malformed",
    "no such table",  # a database that is not the one opened: its directory was replaced or unmounted
)
# A filesystem with no room left works all the same: what it holds is read as before, and its budget is lowered
# so that eviction makes room (Disks._full). Taken out of service, every object on it was a miss until a reload,
# for what the files evicted but still open, or something else on the filesystem, took for a moment.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_SQLITE = "database or disk is full"
SHRINK = 0.9  # a full disk's budget becomes this share of what it holds
# A lowered budget is raised again, as far as the filesystem's room allows (Disks._grow), once this long has passed
# since it last changed: space freed by whatever filled the filesystem is the cache's again without a restart.
GROW_AFTER = 30.0


class OutOfService(StorageError):
    """The value's disk is out of service: what it holds cannot be known until the disk is back."""


class DiskFull(StorageError):
    """The value's filesystem has no room: this write is lost, and the disk's budget is lowered (logged there)."""


def _cause(exc: BaseException) -> BaseException:
    """The error the disk tier gave, under the StorageError it was wrapped in."""
    return exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc


def full(exc: BaseException) -> bool:
    """Does `exc` say the filesystem has no room left (not that the disk failed)?"""
    cause = _cause(exc)
    if isinstance(cause, OSError):
        return cause.errno in _FULL_ERRNOS
    return isinstance(cause, sqlite3.Error) and _FULL_SQLITE in str(cause).lower()


def failure(exc: BaseException) -> str | None:
    """Why `exc` means the disk failed, or None for an error of one operation (a lock timeout, a missing file)."""
    cause = _cause(exc)
    if isinstance(cause, OSError) and cause.errno in _FAILED_ERRNOS:
        return str(cause)
    if isinstance(cause, sqlite3.Error) and any(m in str(cause).lower() for m in _FAILED_SQLITE):
        return f"SQLite: {cause}"
    return None


class Placement:
    """Which disk each key lives on: pure, from the configured disks alone (their paths and sizes)."""

    def __init__(self, disks: Sequence[Disk]) -> None:
        ids = [str(d.path) for d in disks]
        self._ring = Ring.of(Member(id=i, address=i, weight=float(d.size)) for i, d in zip(ids, disks, strict=True))
        self._index = {i: n for n, i in enumerate(ids)}

    def home(self, key: str) -> int:
        """The index in `disks` of the disk `key` lives on, in service or not (a lease: its value's)."""
        if len(self._index) == 1:
            return 0
        owner = self._ring.owner(key.removeprefix(LEASE))
        assert owner is not None
        return self._index[owner.id]


@dataclass(slots=True)
class _Slot:
    """One configured disk: its tier while in service, why it is not otherwise, and its metrics."""

    disk: Disk
    tier: DiskTier | None = None
    failed: str | None = None
    identity: tuple[int, int] = (0, 0)  # st_dev, st_ino of its directory when opened
    mount: bool = False  # its directory was a mount point when opened: a reload wants its filesystem mounted again
    shrunk: float = -PROBE_SECONDS  # when its budget was last lowered for a full filesystem, or raised (monotonic)
    stuck: bool = False  # its filesystem was too full for the deletes that lower its budget (said once)
    reserved: bool = False  # the room kept for its index (storage.reserve) is there, as far as this worker knows
    label: str = field(init=False)
    reserve: int = field(init=False)  # its size
    ops: dict[str, Counter] = field(init=False)  # its metrics' children, looked up once
    errors: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.label = str(self.disk.path)
        self.reserve = reserve.size_for(self.disk.size)
        # Every series exists (at 0) before its first event: dashboards and alerts see the disk from the start.
        self.ops = {op: metrics.DISK_OPS.labels(self.label, op) for op in ("read", "write")}
        self.errors = metrics.DISK_OP_ERRORS.labels(self.label)
        metrics.DISK_FAILURES.labels(self.label)
        metrics.DISK_SIZE.labels(self.label).set(self.disk.size)

    @property
    def up(self) -> bool:
        return self.tier is not None and self.failed is None


class Disks:
    """The DiskTier API the Store uses, over several disks."""

    def __init__(self, slots: list[_Slot], threads: int) -> None:
        self._slots = slots
        self._threads = threads
        self.placement = Placement([s.disk for s in slots])
        self.home = self.placement.home
        self.directory = slots[0].disk.path  # the node's own files (purge log, epoch) live on the first disk
        self.paths = [s.disk.path for s in slots]  # in the config's order
        self.budget_bytes = sum(s.disk.size for s in slots)
        self.on_fail: Callable[[int], None] | None = None  # told the index of a disk that went out of service
        # Probes, openings and closings: never the tiers' own threads, which a hung disk may hold.
        self._io = ThreadPoolExecutor(max_workers=len(slots) + 1, thread_name_prefix="disk-probe")

    @classmethod
    def open_all(cls, disks: Sequence[Disk], threads: int = 8) -> Disks:
        """Open every disk (blocking: run it off the loop). One that cannot be opened starts out of service."""
        slots = [_Slot(d) for d in disks]
        for slot in slots:
            try:
                slot.tier, slot.identity, slot.mount, slot.reserved = _open(slot.disk, threads)
            except Exception as exc:  # whatever a broken disk makes diskcache raise: the node starts without it
                _fail(slot, failure(exc) or f"{type(exc).__name__}: {exc}")
                continue
            metrics.DISK_UP.labels(slot.label).set(1)
        return cls(slots, threads)

    # --- placement ---------------------------------------------------------------------------------------------

    @property
    def failed(self) -> dict[str, str]:
        """Disks out of service, by path: why."""
        return {s.label: s.failed or "not open" for s in self._slots if not s.up}

    @property
    def in_service(self) -> list[Path]:
        return [s.disk.path for s in self._slots if s.up]

    # --- the DiskTier API ---------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._on(key, "read", lambda t: t.get(key))

    async def open(self, key: str) -> BinaryIO | bytes | None:
        return await self._on(key, "read", lambda t: t.open(key))

    async def put(
        self, key: str, value: bytes, lease: str | None = None, pinned: bool = False, lent: bool = False
    ) -> bool:
        return await self._on(key, "write", lambda t: t.put(key, value, lease, pinned, lent))

    async def get_record(self, key: str) -> tuple[bytes | None, int]:
        return await self._on(key, "read", lambda t: t.get_record(key))

    async def put_record(self, key: str, value: bytes, most: int) -> None:
        await self._on(key, "write", lambda t: t.put_record(key, value, most))

    async def claim(self, key: str, value: bytes, keep: Callable[[bytes], bool]) -> bytes:
        return await self._on(key, "write", lambda t: t.claim(key, value, keep))

    async def delete(self, key: str) -> None:
        await self._on(key, "write", lambda t: t.delete(key))

    async def let_go(self, lease: str, owner: str, mark: float = 0.0) -> None:
        await self._on(lease, "write", lambda t: t.let_go(lease, owner, mark))

    async def renew(self, leases: list[str], owner: str, seconds: float) -> None:
        for run in self._runs([n for n in leases if self._slots[self.home(n)].up]):  # (one transaction a disk)
            await self._on(run[0], "write", partial(DiskTier.renew, leases=run, owner=owner, seconds=seconds))

    def note_hit(self, key: str) -> None:
        """A hit the Store served from a file it holds open: counted for its disk's eviction index (no I/O)."""
        slot = self._slots[self.home(key)]
        if slot.tier is not None and slot.up:  # a failed disk's index is written no more
            slot.tier.note_hit(key)

    async def lease(self, keys: list[str], seconds: float, owner: str = "") -> int:
        """As DiskTier.lease, each lease on its value's disk. One on a disk out of service counts as taken: no
        worker can store that value, so each fetches it."""
        taken = 0
        for run in self._runs(keys):
            slot = self._slots[self.home(run[0])]
            if not slot.up:
                taken += len(run)
                continue
            n = await self._use(slot, "write", partial(DiskTier.lease, keys=run, seconds=seconds, owner=owner))
            taken += n
            if n < len(run):
                break
        return taken

    async def contains(self, keys: list[str]) -> list[bool]:
        """Which keys are stored; one on a disk out of service is not."""
        by_slot: dict[int, list[int]] = {}
        for n, key in enumerate(keys):
            by_slot.setdefault(self.home(key), []).append(n)
        found = [False] * len(keys)
        for i, where in by_slot.items():
            slot = self._slots[i]
            if slot.up:
                held = await self._use(slot, "read", partial(DiskTier.contains, keys=[keys[n] for n in where]))
                for n, there in zip(where, held, strict=True):
                    found[n] = there
        return found

    async def volume(self) -> int:
        """Bytes held on the disks in service (each disk's gauge is set on the way)."""
        total = 0
        for slot in self._slots:
            if slot.up:
                used = await self._use(slot, "read", lambda t: t.volume())
                metrics.DISK_USED.labels(slot.label).set(used)
                total += used
        return total

    def close(self) -> None:
        """Close the disks in service. A failed one is left as it is: closing waits for its threads, which a
        broken device may hold, and what it would write (its index's hits) is lost with it anyway."""
        for slot in self._slots:
            if slot.tier is not None and slot.up:
                _close_quietly(slot.tier)
        self._io.shutdown(wait=False)

    # --- failure and return -------------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Until cancelled: probe every disk in service each PROBE_SECONDS."""
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            await asyncio.gather(*(self._probe(s) for s in self._slots if s.up))

    async def revive(self) -> list[str]:
        """Open again each disk out of service whose directory works now (a reload); the paths brought back."""
        loop = asyncio.get_running_loop()
        back = []
        for slot in self._slots:
            if slot.up:
                continue
            try:
                tier, identity, mount, reserved = await loop.run_in_executor(
                    self._io, _open, slot.disk, self._threads, slot.mount
                )
            except Exception as exc:  # as at start
                log.warning("disk %s is still out of service: %s", slot.label, exc)
                continue
            old, slot.tier, slot.identity, slot.failed = slot.tier, tier, identity, None
            slot.mount, slot.shrunk, slot.stuck, slot.reserved = slot.mount or mount, -PROBE_SECONDS, False, reserved
            metrics.DISK_UP.labels(slot.label).set(1)
            metrics.DISK_SIZE.labels(slot.label).set(tier.budget_bytes)  # opened afresh: its whole size
            log.warning("disk %s is back in service", slot.label)
            if old is not None:
                self._io.submit(_close_quietly, old)
            back.append(slot.label)
        return back

    async def _probe(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                why = await loop.run_in_executor(self._io, _check, slot.disk.path, slot.identity)
        except TimeoutError:
            why = f"a probe got no answer in {PROBE_TIMEOUT:g} s"
        if why is not None and slot.up:
            self._fail(slot, why)
            return
        if slot.up and not slot.reserved:  # given up when the filesystem was full: again once it has room
            slot.reserved = await loop.run_in_executor(self._io, reserve.keep, slot.disk.path, slot.reserve)
        if slot.up and slot.tier is not None and self._lowered(slot, slot.tier):
            await self._grow(slot, slot.tier)

    async def _on(self, key: str, op: str, call: Callable[[DiskTier], Awaitable[T]]) -> T:
        return await self._use(self._slots[self.home(key)], op, call)

    async def _use(self, slot: _Slot, op: str, call: Callable[[DiskTier], Awaitable[T]]) -> T:
        if slot.tier is None or slot.failed is not None:
            raise OutOfService(f"disk {slot.label} is out of service: {slot.failed}")
        slot.ops[op].inc()
        try:
            return await call(slot.tier)
        except Exception as exc:  # diskcache on a broken disk may raise anything, its own asserts included
            slot.errors.inc()
            if full(exc):
                await self._full(slot, exc)
                raise DiskFull(f"disk {slot.label} is full: {exc}") from exc
            why = failure(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
            if why is None and slot.failed is not None:  # it failed meanwhile, and this call was let go (abandon)
                raise OutOfService(f"disk {slot.label} failed: {slot.failed}") from exc
            if why is None:
                raise
            if slot.failed is None:
                self._fail(slot, why)
            raise OutOfService(f"disk {slot.label} failed: {why}") from exc

    async def _full(self, slot: _Slot, exc: BaseException) -> None:
        """Lower the full disk's budget below what it holds, once a PROBE_SECONDS at most (a burst of writes meets
        the same full filesystem); one whose deletes fail for a failure of the disk goes out of service, and one too
        full for them (SQLite's log has no room) stays in service, read as before, until it has room."""
        now = time.monotonic()
        if slot.tier is None or now - slot.shrunk < PROBE_SECONDS:
            return
        slot.shrunk, before = now, slot.tier.budget_bytes
        try:
            budget = await self._shrink(slot, slot.tier)
        except StorageError as again:
            if not full(again):
                if slot.failed is None:
                    self._fail(slot, f"full, and nothing could be deleted: {again}")
            elif not slot.stuck:  # not even its index takes a write: what it holds is read all the same
                log.warning("disk %s is full to the last byte: nothing is stored there until it has room", slot.label)
            slot.stuck = full(again)
            return
        slot.stuck = False
        if budget == before:  # nothing held to make room from (said when it was lowered to this)
            return
        metrics.DISK_SIZE.labels(slot.label).set(budget)
        log.warning(
            "disk %s is full (%s): its budget is lowered to %d bytes until its filesystem has room again; free "
            "space there or lower its size",
            slot.label,
            exc,
            budget,
        )

    async def _shrink(self, slot: _Slot, tier: DiskTier) -> int:
        """Lower the budget below what the disk holds; on a filesystem too full for the deletes that takes, with
        the room kept for the index given up (storage.reserve)."""
        try:
            return await tier.shrink(SHRINK)
        except StorageError as exc:
            loop = asyncio.get_running_loop()
            if not (full(exc) and await loop.run_in_executor(self._io, reserve.release, slot.disk.path)):
                raise
        slot.reserved = False
        log.warning("disk %s is full to the last byte: the room kept for its index is given up", slot.label)
        return await tier.shrink(SHRINK)

    @staticmethod
    def _lowered(slot: _Slot, tier: DiskTier) -> bool:
        """Is its budget below its size, and unchanged for GROW_AFTER seconds?"""
        return tier.budget_bytes < slot.disk.size and time.monotonic() - slot.shrunk >= GROW_AFTER

    async def _grow(self, slot: _Slot, tier: DiskTier) -> None:
        """Raise a budget that a full filesystem lowered, as far as the room there allows now (DiskTier.grow)."""
        slot.shrunk, before = time.monotonic(), tier.budget_bytes
        try:
            budget = await tier.grow(slot.disk.size, SHRINK)
        except StorageError:  # what is wrong is found by the next write or probe
            return
        if budget > before:
            metrics.DISK_SIZE.labels(slot.label).set(budget)
            log.warning("disk %s has room again: its budget is raised to %d bytes", slot.label, budget)

    def _fail(self, slot: _Slot, why: str) -> None:
        _fail(slot, why)
        if self.on_fail is not None:
            self.on_fail(self._slots.index(slot))

    def _runs(self, keys: list[str]) -> list[list[str]]:
        """`keys` cut into runs of neighbours on the same disk, in order."""
        runs: list[list[str]] = []
        last = -1
        for key in keys:
            home = self.home(key)
            if runs and home == last:
                runs[-1].append(key)
            else:
                runs.append([key])
            last = home
        return runs


def _fail(slot: _Slot, why: str) -> None:
    slot.failed = why
    if slot.tier is not None:  # calls waiting for its threads (a hung device holds them) end now
        slot.tier.abandon(why)
    metrics.DISK_UP.labels(slot.label).set(0)
    metrics.DISK_FAILURES.labels(slot.label).inc()
    log.error("disk %s failed and is out of service (its objects are fetched from origin): %s", slot.label, why)


def _open(disk: Disk, threads: int, mount: bool = False) -> tuple[DiskTier, tuple[int, int], bool, bool]:
    """The disk's tier, its directory's identity, whether that directory is a mount point, and whether the room
    kept for its index is there (storage.reserve, made now if there is room for it). `mount`: it was
    one when first opened, and must be one again: the bare directory under an unmounted disk is on the parent
    filesystem (the root one, often), which the disk's budget would fill; it takes a file all the same."""
    if mount and not os.path.ismount(disk.path):
        raise StorageError(f"{disk.path} is not a mount point any more: the disk's filesystem is not mounted")
    # The directory must take a file before SQLite is opened there: a database that fails to open cannot be
    # closed, and would hold the filesystem (a read-only one, say) until it is collected.
    disk.path.mkdir(parents=True, exist_ok=True)
    why = _writable(disk.path)
    if why is not None:
        raise StorageError(why)
    try:
        tier = DiskTier(disk.path, disk.size, threads=threads)
    except Exception as exc:
        if not (full(exc) and reserve.release(disk.path)):
            raise
        log.warning("disk %s: its filesystem is full; the room kept for its index is given up to open it", disk.path)
        tier = DiskTier(disk.path, disk.size, threads=threads)
    st = os.stat(disk.path)
    return (
        tier,
        (st.st_dev, st.st_ino),
        os.path.ismount(disk.path),
        reserve.keep(disk.path, reserve.size_for(disk.size)),
    )


def _check(path: Path, identity: tuple[int, int]) -> str | None:
    """Why the disk at `path` does not work: its directory is another one (unmounted, replaced) or gone, or a
    small file cannot be written there. None: it works."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"probe: {exc}"
    if (st.st_dev, st.st_ino) != identity:
        return f"{path} is no longer the directory opened (unmounted or replaced)"
    return _writable(path)


def _writable(path: Path) -> str | None:
    probe = path / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"edgecache disk probe\n")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:  # full, but working: its budget is lowered when a write meets it
            with contextlib.suppress(OSError):
                os.unlink(probe)
            return None
        return f"probe: {exc}"
    return None


def _close_quietly(tier: DiskTier) -> None:
    with contextlib.suppress(Exception):  # a failed disk's database may not close cleanly; nothing is lost
        tier.close()
