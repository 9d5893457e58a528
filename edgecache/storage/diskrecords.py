"""The disk's primary records that hide older copies (an invalidation's or a purge's generation, a soft purge), and
their bound: DiskTier's side for them, a mixin as Store's are.

Such a record cannot simply be evicted: without it a look-up would key the object as before its first purge and
find the copies stored then, which nothing can find by URL to delete (their keys hash the whole entry key).
So a disk keeps at most `most` of them (cache.purged_records); past it the oldest written goes, and its bucket
(diskindex.bucket_of, one of 65,536) counts one more drop in the same transaction, as it does for a record that
failed its checksum (deleted as it was read) or was deleted otherwise. A look-up that finds no record
gets its bucket's count with it (in one call, read after the record: a drop that took the record is seen), and
keys the object under core.keys.bucket_generation of it: every object of the bucket without a record of its own
is a miss once, the dropped one's purged copies are never found again, and a bucket never dropped from keys
objects as before (no copy lost to an upgrade). The counts only grow, on the disk with its records, so no key is
used again; they need not be replicated (each node keys its own disk), nor told to the other workers (a record or
count one holds in memory hides no less than it did).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import diskcache

from edgecache import metrics
from edgecache.storage.checksum import tag_of
from edgecache.storage.diskindex import RECORDS, SQLiteQueues
from edgecache.storage.policy import DiskPolicy
from edgecache.storage.slicedisk import SliceDisk

T = TypeVar("T")


class Records:
    _cache: diskcache.Cache
    _slice_disk: SliceDisk
    _queues: SQLiteQueues
    policy: DiskPolicy

    async def _run(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _get_checked(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _delete_values(self, keys: list[str]) -> None:
        raise NotImplementedError

    def note_hit(self, key: str) -> None:
        raise NotImplementedError

    def _forget(self, key: str) -> None:
        """Delete a value and its index row together. A record that hides copies (one failing its checksum: DiskTier.
        _corrupt) goes as a drop of its bucket, counted in the same transaction: without it a look-up would key its
        object as before its purge, and find the copies it hid."""
        with self._slice_disk.transaction(self._cache):
            self._cache.delete(key, retry=True)
            lost = self._queues.lose_record(key)
            self.policy.remove(key)
        if lost:  # committed
            metrics.PURGED_RECORDS_DROPPED.inc()

    async def get_record(self, key: str) -> tuple[bytes | None, int]:
        """The record stored under `key` (as get()), or None and how many records of its bucket were dropped."""

        def read() -> tuple[bytes | None, int]:
            value = self._get_checked(key)
            return value, self._queues.dropped(key) if value is None else 0

        value, dropped = await self._run(read)
        if value is not None:
            self.note_hit(key)
        return value, dropped

    async def put_record(self, key: str, value: bytes, most: int) -> None:
        """Store a record that hides older copies, outside the budget, never evicted; past `most` such records, the
        oldest go and their buckets count the drops: one transaction with the write."""

        def write() -> None:
            with self._slice_disk.transaction(self._cache):
                self.policy.remove(key)
                self._queues.pin(key, len(value), RECORDS)
                dropped = self._queues.bound_records(max(1, most))
                self._delete_values(dropped)
                self._cache.set(key, value, tag=tag_of(value), retry=True)
            if dropped:  # committed (in a disk thread: counted at once)
                metrics.PURGED_RECORDS_DROPPED.inc(len(dropped))

        await self._run(write)
