"""The tiered store: object metadata and slices, memory tier first, disk tier behind it.

Slice names carry the object version, so a reader holding metadata for version A can only ever find slices of
version A. A slice read from disk is checked against the length the metadata promises; a short or damaged one
is dropped and reported missing, so it is refetched rather than served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import BinaryIO

from edgecache import metrics
from edgecache.config.model import PURGED_RECORDS, Disk
from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import PrimaryRecord, bucket_generation, digest
from edgecache.errors import StorageError
from edgecache.storage import placed
from edgecache.storage.disk import lease_name
from edgecache.storage.disks import DiskFull, Disks, OutOfService
from edgecache.storage.heldmeta import Budget, Held
from edgecache.storage.leases import PEER_POLL, Leases
from edgecache.storage.memory import MemoryTier
from edgecache.storage.purging import Purging, not_kept
from edgecache.storage.slicefile import SliceFile
from edgecache.storage.slicenames import meta_name, meta_of, slice_name
from edgecache.storage.tiers import Tiers

__all__ = ["LAZY_META_SECONDS", "OPEN_FILES", "PEER_POLL", "SliceFile", "Store", "slice_name"]

log = logging.getLogger(__name__)


OPEN_FILES = 1024  # slice files kept open for the fast path's disk hits (the worker raises its fd limit)


LAZY_META_SECONDS = 10.0

# The tables of metadata, records and write marks hold this many bytes together at most (keys included), and
# what one of their entries holds (measured with tracemalloc, rounded up).
META_BYTES = 16 * 2**20
META_ENTRY_BYTES = 700
FIELD_BYTES = 130
RECORD_BYTES = 250


def _same_copy(meta: ObjectMeta) -> int:
    """What must match for a lazy metadata write to be skipped: the copy and every field but Date and Age.

    Only a hash is kept (16,384 of them): a collision could at worst leave the disk's copy of the fields up to
    LAZY_META_SECONDS behind, as a skipped write always may.
    """
    fields = tuple(h for h in meta.headers if h[0].lower() not in ("date", "age"))
    return hash((meta.version, meta.token, meta.status, meta.length, meta.whole, meta.vary, fields))


class Store(Purging, Leases, Tiers):
    """Metadata, primary records and slices; purges and the workers' change counter are its Purging side."""

    # Metadata this process keeps at hand (LRU; the disk tier has all of it). An entry is a few KiB with its
    # headers, so this is counted against the per-worker memory overhead, not the memory tier: keep it modest.
    # They hold META_BYTES together at most, keys included (storage.heldmeta).
    def __init__(
        self,
        memory: MemoryTier,
        disk: Disks,
        meta_entries: int = 16_384,
        meta_bytes: int = META_BYTES,
        tiers: str = "inclusive",
    ) -> None:
        super().__init__(disk.directory)
        self.memory = memory
        self.disk = disk
        self.held = Budget(meta_bytes)
        self._meta: Held[ObjectMeta] = Held(self.held, meta_entries, _meta_cost)
        # What put_meta() last wrote to disk for a key: a hash of the copy and its fields, and its response time.
        self._written: Held[tuple[int, float]] = Held(self.held, meta_entries, lambda _: 0)
        self._deleting: Counter[str] = Counter()  # entry keys whose metadata is being deleted from the disk tier
        self._records: Held[PrimaryRecord] = Held(self.held, meta_entries, _record_cost)
        self._writing: dict[str, bytes] = {}  # slices being written to disk, by name
        self._meta_entries = meta_entries  # lowered by the RSS bound under pressure (set_meta_entries)
        self._files: OrderedDict[str, SliceFile] = OrderedDict()
        disk.on_fail = self._disk_failed
        self.shared = False  # other worker processes use the same disk tier: coordinate fills through leases
        # The node's slice size (cache.slice), once known: metadata stored under another (before a restart that
        # changed it) is not this node's copy, since the request path indexes slices by the node's size.
        self.slice_size: int | None = None
        self.purged_records = PURGED_RECORDS  # cache.purged_records: the records that hide copies a disk keeps
        self._init_tiers(tiers)

    # --- metadata -----------------------------------------------------------------------------------------

    @property
    def meta_entries(self) -> int:
        return self._meta_entries

    def set_meta_entries(self, n: int) -> None:
        """Keep at most n entries of metadata, primary records and write marks at hand (the RSS bound lowers it
        when the memory tier alone cannot give back enough); the disk tier still has all of them."""
        self._meta_entries = max(1, n)
        for table in (self._meta, self._records, self._written):
            table.entries = self._meta_entries
            table.trim()

    def peek_meta(self, key: str) -> ObjectMeta | None:
        """What this process knows right now, without waiting for the disk."""
        return self._meta.get(key)

    def touch_meta(self, key: str, primary: str) -> None:
        """A hit served without get_meta() still counts as recent use of its metadata and primary record."""
        # try, not contextlib.suppress (a context manager a hit) nor a membership test first (a second call)
        try:  # noqa: SIM105
            self._meta.touch(key)
        except KeyError:  # not held (forgotten meanwhile): nothing to count
            pass
        try:  # noqa: SIM105
            self._records.touch(primary)
        except KeyError:
            pass

    def remember_meta(self, key: str, meta: ObjectMeta) -> None:
        """Make `meta` visible to this process at once; put_meta() then persists it."""
        self._remember(key, meta)

    def _remember(self, key: str, meta: ObjectMeta) -> None:
        self._meta.put(key, meta)

    async def get_meta(self, entry_key: str) -> ObjectMeta | None:
        meta = self._meta.get(entry_key)
        if meta is not None:
            self._meta.touch(entry_key)
            return meta
        return await self.meta_on_disk(entry_key)

    async def meta_on_disk(self, entry_key: str) -> ObjectMeta | None:
        """What the disk tier holds for `entry_key` (another worker may have written it since this one read it),
        remembered."""
        if entry_key in self._deleting:
            return None  # absent meanwhile: not read back
        try:
            raw = await self.disk.get(meta_name(entry_key))
        except StorageError as exc:
            _warn("metadata read failed, treating as a miss", exc)
            return None
        meta = ObjectMeta.from_bytes(raw) if raw is not None else None
        if meta is not None and self.slice_size is not None and meta.slice_size != self.slice_size:
            # Its slices cover other bytes than the same indices do now: a miss, and the fill a copy of its own
            # (a new token names new slices; the old ones are evicted in time).
            return None
        if meta is not None:
            self._remember(entry_key, meta)
        return meta

    async def put_meta(self, entry_key: str, meta: ObjectMeta, lazy: bool = False) -> None:
        """Remember `meta` and write it to the disk tier. `lazy`: skip the write when the disk already has the
        same copy with the same fields from less than LAZY_META_SECONDS before.

        A fill of a slice of an object already stored brings the same copy with a newer response time; writing
        it for every slice was two SQLite transactions per slice. What the disk holds is then a little older,
        which after a restart can only make the copy look less fresh, never more.
        """
        self._remember(entry_key, meta)
        same = _same_copy(meta)
        if lazy:
            written = self._written.get(entry_key)
            if written is not None and written[0] == same and meta.response_time - written[1] < LAZY_META_SECONDS:
                return
        try:
            await self.disk.put(meta_name(entry_key), meta.to_bytes())
        except StorageError as exc:
            _warn("metadata write failed", exc)
            return
        self._wrote(entry_key, meta)

    async def claim_meta(self, entry_key: str, meta: ObjectMeta, more_of: Callable[[ObjectMeta], bool]) -> ObjectMeta:
        """put_meta() for a new copy's metadata, unless the disk holds a copy `more_of` says the body is more of
        (another worker's, named meanwhile): then the copy goes on under that one's token, whose slices the workers
        then fetch once between them. What this process remembers either way, before anyone reads the copy."""

        def keep(raw: bytes) -> bool:
            other = ObjectMeta.from_bytes(raw)  # None: damaged, replaced
            return (
                other is not None
                and other.token != meta.token
                and other.slice_size == meta.slice_size
                and more_of(other)
            )

        ours = meta.to_bytes()
        try:
            raw = await self.disk.claim(meta_name(entry_key), ours, keep)
        except StorageError as exc:
            _warn("metadata write failed", exc)
            raw = None
        claimed = meta
        on_disk = meta if raw == ours else ObjectMeta.from_bytes(raw) if raw is not None else None
        if on_disk is not None:
            if on_disk is not meta:  # kept: another worker's copy, which the body is more of
                claimed = replace(meta, whole=meta.whole or on_disk.whole, token=on_disk.token)
            self._wrote(entry_key, on_disk)
        self._remember(entry_key, claimed)
        return claimed

    def _wrote(self, entry_key: str, meta: ObjectMeta) -> None:
        """What the disk holds for `entry_key` now (a lazy put_meta compares with it)."""
        self._written.put(entry_key, (_same_copy(meta), meta.response_time))

    def _forget_held(self) -> None:
        self._records.clear()
        self._meta.clear()
        self._written.clear()

    def _forget_keys(self, hashes: list[int]) -> None:
        for table in (self._meta, self._records, self._written):
            table.index_keys()  # from the first replacement another worker tells of
            for h in hashes:
                table.pop_hashed(h)

    async def drop_version(self, entry_key: str, meta: ObjectMeta) -> None:
        """Delete the entry if it still is `meta`'s version: one whose slice came back as another version. The fill
        that met the new version may have stored its metadata already, and that is kept."""
        current = self._meta.get(entry_key)
        if current is None or current.slice_version == meta.slice_version:
            await self.delete_meta(entry_key)

    async def delete_meta(self, entry_key: str) -> None:
        self._meta.pop(entry_key)
        self._written.pop(entry_key)
        self._deleting[entry_key] += 1  # absent meanwhile: a lookup must not read it back from the disk
        try:
            await self.disk.delete(meta_name(entry_key))
        except StorageError as exc:
            _warn("metadata delete failed", exc)
        finally:
            self._deleting[entry_key] -= 1
            if not self._deleting[entry_key]:
                del self._deleting[entry_key]

    # --- primary records: generation and Vary of a primary key ----------------------------------------------

    def peek_record(self, primary: str) -> PrimaryRecord | None:
        return self._records.get(primary)

    def remember_record(self, primary: str, record: PrimaryRecord) -> None:
        self._records.put(primary, record)

    async def get_record(self, primary: str) -> PrimaryRecord:
        record = self._records.get(primary)
        if record is not None:
            self._records.touch(primary)
            return record
        try:
            raw, dropped = await self.disk.get_record("v:" + digest(primary))
        except OutOfService:
            # Its disk failed: a generation of its own, so that no copy stored under an earlier one (purged since,
            # or not) is found on the other disks while the record cannot be read. This process caches under it.
            record = PrimaryRecord(generation=secrets.token_hex(4))
            self.remember_record(primary, record)
            return record
        except StorageError:  # of this read only (a lock timeout): as above, for this look-up alone
            return PrimaryRecord(generation=secrets.token_hex(4))
        record = PrimaryRecord.from_bytes(raw) if raw is not None else PrimaryRecord(bucket_generation(dropped))
        self.remember_record(primary, record)
        return record

    async def put_record(self, primary: str, record: PrimaryRecord) -> None:
        self.remember_record(primary, record)
        # A record that hides older copies is never evicted, only dropped past a bound (storage.diskrecords): evicted
        # while a copy it hides stays, that copy would be found again. One that hides nothing is the same as none.
        name, hides = "v:" + digest(primary), record.hides
        try:
            if hides:
                await self.disk.put_record(name, record.to_bytes(), self.purged_records)
            else:
                await self.disk.put(name, record.to_bytes())
        except StorageError as exc:
            _warn("primary record write failed", exc)
            if hides:  # a purge's (a new generation, a soft purge): it holds until a restart only
                not_kept("its primary record")

    async def invalidate(self, primary: str) -> None:
        """Every stored variant and slice of `primary` becomes unreachable: a new generation, no Vary known."""
        await self.put_record(primary, PrimaryRecord(generation=secrets.token_hex(4)))
        self._changed()

    async def soft_invalidate(self, primary: str, now: float) -> None:
        """Every stored variant of `primary` becomes stale: the next request revalidates it with the origin."""
        record = await self.get_record(primary)
        await self.put_record(primary, replace(record, soft_before=now))
        self._changed()

    # --- slices ----------------------------------------------------------------------------------------------

    def memory_slice(self, name: str) -> bytes | None:
        data = self.memory.get(name)
        return data if data is not None else self._writing.get(name)

    def slice_from_memory(self, entry_key: str, meta: ObjectMeta, index: int) -> bytes | None:
        name = slice_name(entry_key, meta.slice_version, index)
        data = self.memory.get(name)
        # A slice on its way to disk (and not admitted to memory) is still here: never fetched twice meanwhile.
        return data if data is not None else self._writing.get(name)

    def in_memory(self, entry_key: str, meta: ObjectMeta, index: int) -> bool:
        """Is the slice in memory, or on its way to disk (as slice_from_memory finds it), without touching it?"""
        name = slice_name(entry_key, meta.slice_version, index)
        return name in self.memory or name in self._writing

    async def slice_from_disk(self, entry_key: str, meta: ObjectMeta, index: int) -> bytes | None:
        name = slice_name(entry_key, meta.slice_version, index)
        try:
            data = await self.disk.get(name)
        except StorageError as exc:
            _warn("slice read failed, refetching", exc)
            return None
        if data is None:
            return None
        if len(data) != meta.slice_length(index):
            await self._wrong_length(name, len(data), meta.slice_length(index))
            return None
        self.disk.note_hit(meta_of(name))
        self.took_named(name, entry_key, meta.slice_version, data)
        return data

    def open_file(self, entry_key: str, meta: ObjectMeta, index: int) -> SliceFile | None:
        """The slice's file if it is open already (no I/O beyond one fstat)."""
        return self.open_file_named(slice_name(entry_key, meta.slice_version, index))

    def open_file_named(self, name: str) -> SliceFile | None:
        f = self._files.get(name)
        if f is None:
            return None
        if f.changed():
            del self._files[name]
            f.drop()
            return None
        self._files.move_to_end(name)
        self.disk.note_hit(name)  # the disk's eviction index counts it, as a hit that opened the file
        self.disk.note_hit(meta_of(name))
        return f

    async def open_slice(self, entry_key: str, meta: ObjectMeta, index: int) -> SliceFile | bytes | None:
        """Open a slice on disk for reading in pieces (small ones come back whole), checked as slice_from_disk."""
        name = slice_name(entry_key, meta.slice_version, index)
        try:
            value = await self.disk.open(name)
        except StorageError as exc:
            _warn("slice open failed, refetching", exc)
            return None
        if value is None:
            return None
        self.disk.note_hit(meta_of(name))
        if isinstance(value, bytes):  # a small slice, kept in the index itself: offered to memory, as a read is
            if len(value) != meta.slice_length(index):
                await self._wrong_length(name, len(value), meta.slice_length(index))
                return None
            self.took_named(name, entry_key, meta.slice_version, value)
            return value
        f = SliceFile(value)
        if f.size != meta.slice_length(index):
            f.drop()
            await self._wrong_length(name, f.size, meta.slice_length(index))
            return None
        if (old := self._files.pop(name, None)) is not None:
            old.drop()
        self._files[name] = f
        while len(self._files) > OPEN_FILES:
            self._files.popitem(last=False)[1].drop()
        return f

    def _disk_failed(self, index: int) -> None:
        """Disk `index` went out of service: the files it holds open are served no more (a reader holding one
        keeps it until done), so their objects are misses, as on a disk that was never opened."""
        for name in [n for n in self._files if self.disk.home(n) == index]:
            self._files.pop(name).drop()

    async def close_evicted(self) -> int:
        """Close the open files of slices the disk tier no longer has (evicted, purged or dropped, by any worker);
        how many. An open file keeps its blocks allocated: kept in the cache of open files until looked up again,
        evicted slices held the disk past its budget, up to OPEN_FILES slices per worker, and filled it (ENOSPC,
        the disk out of service). A reader holding one keeps it until done (SliceFile.drop).

        The files are looked at (an fstat each) off the loop: on NFS or FUSE, or a sick device, an fstat waits.
        A file the cache let go meanwhile may be closed under the look (its answer is then of no use): only a
        file still cached, the same one, is closed here, and a cached file is never closed elsewhere."""
        held = list(self._files.items())
        loop = asyncio.get_running_loop()
        gone = await loop.run_in_executor(None, _gone_of, held)
        closing, closed = [], 0
        for name, f in gone:
            if self._files.get(name) is f:
                del self._files[name]
                closed += 1
                if (file := f.let_go()) is not None:
                    closing.append(file)
        # Closed off the loop, in one hop: such a close frees the file's blocks (SliceFile.let_go), and exclusive tiers
        # let go of each slice memory takes from disk. Shielded: a cancelled stop must not leave them open.
        if closing:
            await asyncio.shield(loop.run_in_executor(None, _close_all, closing))
        return closed

    async def revive(self, disks: Sequence[Disk]) -> None:
        """Open again the disks out of service that work now (a reload). One may have been out at a change of
        `disks`: those back are compared with the list too, as at a start (note_placement)."""
        if await self.disk.revive():
            await self.note_placement(disks)

    async def note_placement(self, disks: Sequence[Disk]) -> None:
        """Compare `disks` with the list the disks in service were last used under (storage.placed): what was
        stored before a change of it is revalidated from now on."""
        now = time.time()
        at = await asyncio.get_running_loop().run_in_executor(None, placed.since, disks, self.disk.in_service, now)
        if at > self.placed_at:
            self.placed_at = at
            self.purges = replace(self.purges)  # a new table object: the fast path decides its hits again

    def close_files(self) -> None:
        for f in self._files.values():
            f.drop()
        self._files.clear()

    async def _wrong_length(self, name: str, got: int, expected: int) -> None:
        log.warning("slice %s has %d bytes, expected %d: dropped", name, got, expected)
        metrics.DISK_CORRUPT.inc()
        await self._drop(name)

    async def _drop(self, name: str) -> None:
        self.memory.delete(name)
        if (f := self._files.pop(name, None)) is not None:
            f.drop()
        with contextlib.suppress(StorageError):
            await self.disk.delete(name)

    async def missing(self, entry_key: str, meta: ObjectMeta, indices: list[int]) -> list[int]:
        """Which of `indices` are in neither tier (one disk round trip for all of them)."""
        names = [slice_name(entry_key, meta.slice_version, i) for i in indices]
        held = [(i, n) for i, n in zip(indices, names, strict=True)]
        not_in_memory = [(i, n) for i, n in held if n not in self.memory and n not in self._writing]
        if not not_in_memory:
            return []
        try:
            on_disk = await self.disk.contains([n for _, n in not_in_memory])
        except StorageError:
            on_disk = [False] * len(not_in_memory)
        return [i for (i, _), found in zip(not_in_memory, on_disk, strict=True) if not found]

    def put_slice_memory(self, entry_key: str, version: str, index: int, data: bytes) -> None:
        self.memory.put(slice_name(entry_key, version, index), data)

    async def put_slice_disk(self, entry_key: str, version: str, index: int, data: bytes) -> bool:
        name = slice_name(entry_key, version, index)
        self._writing[name] = data
        try:
            return await self.disk.put(name, data, lease=lease_name(name) if self.shared else None)
        except StorageError as exc:
            _warn("slice write failed (the node keeps serving from origin)", exc)
            return False
        finally:
            self._writing.pop(name, None)


def _warn(what: str, exc: StorageError) -> None:
    """A disk operation failed; not logged when its disk is out of service or full (storage.disks logged that)."""
    if not isinstance(exc, OutOfService | DiskFull):
        log.warning("%s: %s", what, exc)


def _meta_cost(meta: ObjectMeta) -> int:
    """What a copy's metadata holds beyond its key: the object, and its fields (a tuple and two strings each)."""
    return META_ENTRY_BYTES + sum(FIELD_BYTES + len(k) + len(v) for k, v in meta.headers)


def _record_cost(record: PrimaryRecord) -> int:
    return RECORD_BYTES + sum(60 + len(name) for name in record.vary or ())


def _close_all(files: list[BinaryIO]) -> None:
    for file in files:
        file.close()


def _gone_of(files: list[tuple[str, SliceFile]]) -> list[tuple[str, SliceFile]]:
    """Those of `files` that are _gone (in a thread)."""
    return [(name, f) for name, f in files if _gone(f)]


def _gone(f: SliceFile) -> bool:
    """Evicted or changed since it was opened; a file whose disk fails to answer (an I/O error) is let go too."""
    try:
        return f.changed()
    except OSError:
        return True
