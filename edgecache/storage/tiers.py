"""Exclusive tiers (cache.tiers = "exclusive"): a slice is in memory or on disk, not in both.

A fill's slice that memory keeps is not written to disk (Store.keep_in_memory); what memory evicts later is
written to disk then, through a bounded write-back (spill); a disk hit memory takes leaves the disk
(Store.took_from_disk), and goes back to the disk's main queue, with a full counter, when memory evicts it (a
reuse the disk saw is not forgotten). The two tiers so hold their sum of distinct slices, where inclusive tiers
hold about the disk's (loadtest/README.md "Inclusive or exclusive tiers"). One worker only: each worker has its
own memory tier.

A mixin of Store (storage.store), as Purging is: it reads the Store's metadata, records and purge table to check,
before a spill is written, that the slice still is its object's current copy. A purge or a new version between
the eviction and the write leaves its slice unwritten (counted "stale"), never on disk again.

Inclusive tiers (the default) run none of this: memory.on_drop stays None and nothing is held here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from edgecache import metrics
from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import PrimaryRecord, entry_parts, primary_parts
from edgecache.core.purge import PurgeTable
from edgecache.errors import StorageError
from edgecache.storage.disks import DiskFull, Disks, OutOfService
from edgecache.storage.memory import MemoryTier
from edgecache.storage.slicenames import slice_name

log = logging.getLogger("edgecache.storage.store")

# Bytes of evicted slices waiting for their disk write, at most: an eighth of the memory tier, within these. The
# floor holds the burst a few fills evict at once even where a slice is the largest item of a small tier (an
# eighth of it): a slice dropped past the bound is one its fill has let go as stored, which a reader fetches again.
SPILL_LEAST, SPILL_MOST = 16 * 2**20, 64 * 2**20


class Tiers:
    memory: MemoryTier
    disk: Disks
    purges: PurgeTable
    _writing: dict[str, bytes]

    def _init_tiers(self, tiers: str) -> None:
        """`tiers`: cache.tiers; "exclusive" with one worker only (config.cache.check_tiers)."""
        self.exclusive = False
        # The slices only memory holds (kept from a fill, or taken from disk): name -> (entry key, copy, taken
        # from disk: written back to the disk's main, policy.S3FIFOPolicy.admit's `lent`).
        self._held: dict[str, tuple[str, str, bool]] = {}
        self.spill_bound = 0
        self.spilling = 0  # bytes of evicted slices waiting for their write
        self._tier_tasks: dict[str, asyncio.Task[None]] = {}  # a slice's delete or spill under way, by name
        if tiers == "exclusive":
            self.use_exclusive()

    async def get_meta(self, entry_key: str) -> ObjectMeta | None:
        raise NotImplementedError

    async def get_record(self, primary: str) -> PrimaryRecord:
        raise NotImplementedError

    def use_exclusive(self) -> None:
        self.exclusive = True
        self.spill_bound = min(max(self.memory.budget_bytes // 8, SPILL_LEAST), SPILL_MOST)
        self.memory.on_drop = self._spill

    def keep_in_memory(self, entry_key: str, version: str, index: int, data: bytes) -> bool:
        """Exclusive: a fill's slice offered to memory alone; True if memory keeps it (then not written to disk)."""
        name = slice_name(entry_key, version, index)
        if not self.memory.put(name, data):
            return False
        self._hold(name, (entry_key, version, False))
        return True

    def took_from_disk(self, entry_key: str, version: str, index: int, data: bytes) -> None:
        """A slice read from disk, offered to memory; exclusive, one memory keeps leaves the disk."""
        self.took_named(slice_name(entry_key, version, index), entry_key, version, data)

    def took_named(self, name: str, entry_key: str, version: str, data: bytes) -> None:
        """took_from_disk() with the slice's name already made."""
        if not self.memory.put(name, data) or not self.exclusive:
            return
        self._hold(name, (entry_key, version, True))
        self._start(name, self._delete(name))

    def _hold(self, name: str, held: tuple[str, str, bool]) -> None:
        self._held[name] = held
        if len(self._held) > 2 * len(self.memory) + 1024:  # names memory deleted (not evicted): forgotten
            self._held = {k: v for k, v in self._held.items() if k in self.memory}

    def _start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on slice `name` after the one under way for it (a delete goes before the spill after it)."""
        task = asyncio.get_running_loop().create_task(self._after(self._tier_tasks.get(name), work))
        self._tier_tasks[name] = task
        task.add_done_callback(lambda t: self._tier_tasks.pop(name) if self._tier_tasks.get(name) is t else None)

    @staticmethod
    async def _after(before: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]) -> None:
        if before is not None:
            await asyncio.wait([before])
        await work

    async def _delete(self, name: str) -> None:
        try:
            await self.disk.delete(name)
        except StorageError as exc:
            if not isinstance(exc, OutOfService | DiskFull):
                log.warning("slice taken into memory not deleted from disk: %s", exc)

    def _spill(self, name: str, value: bytes) -> None:
        """memory.on_drop: an evicted slice only memory held goes to disk, within the write-back's bound."""
        held = self._held.pop(name, None)
        if held is None:  # not only memory's (a spread copy)
            return
        # Spilled even while an older spill of it waits: memory took it back meanwhile, so its delete is queued
        # after that spill (_start) and would take what that spill writes. This one goes after the delete.
        if self.spilling + len(value) > self.spill_bound:
            metrics.TIER_SPILLS.labels("dropped").inc()
            return
        self.spilling += len(value)
        self._writing[name] = value  # found there by readers until written (Store.slice_from_memory)
        self._start(name, self._spill_write(name, held, value))

    async def _spill_write(self, name: str, held: tuple[str, str, bool], value: bytes) -> None:
        entry_key, version, lent = held
        try:
            if not await self._current(entry_key, version):
                metrics.TIER_SPILLS.labels("stale").inc()
                return
            try:
                stored = await self.disk.put(name, value, lent=lent)
            except StorageError as exc:
                if not isinstance(exc, OutOfService | DiskFull):  # those storage.disks logged
                    log.warning("evicted slice not written to disk: %s", exc)
                stored = False
            metrics.TIER_SPILLS.labels("written" if stored else "dropped").inc()
        finally:
            self.spilling -= len(value)
            if self._writing.get(name) is value:
                del self._writing[name]

    async def _current(self, entry_key: str, version: str) -> bool:
        """Is `version` the copy the object's metadata names, under the generations it was stored with (its
        record's, its purge scopes')? An entry key it cannot read is taken as not current."""
        meta = await self.get_meta(entry_key)
        if meta is None or meta.slice_version != version:
            return False
        primary, scope, generation = entry_parts(entry_key)
        if (await self.get_record(primary)).generation != generation:
            return False
        parts = primary_parts(primary)
        return parts is not None and self.purges.lookup(*parts)[0] == scope

    async def spilled(self) -> None:
        """Wait for the deletes and spills under way (before the disk closes, and in tests)."""
        while self._tier_tasks:
            await asyncio.wait(list(self._tier_tasks.values()))

    async def stop_spilling(self, seconds: float) -> None:
        """At shutdown: spilled(), `seconds` at most, then what is left cancelled. What only memory holds is not
        written: a restart loses it."""
        try:
            async with asyncio.timeout(seconds):
                await self.spilled()
        except TimeoutError:
            for task in list(self._tier_tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tier_tasks.values(), return_exceptions=True)
