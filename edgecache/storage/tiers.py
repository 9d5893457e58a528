"""Exclusive tiers (cache.tiers = "exclusive"): a slice is in memory or on disk, not in both.

A fill's slice that memory keeps is not written to disk (Store.keep_in_memory); what memory evicts later is
written to disk then, through a bounded write-back (spill; while it is full, a fill's slice goes to disk at once
and a disk hit stays there, so nothing is evicted past it: _backed_up); a disk hit memory takes leaves the disk
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
import contextlib
import logging
import time
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
# What a stop writes of memory to disk at most (keep_on_stop), as a share of the disk budget. The whole budget
# was too much: the disk also holds the objects' metadata and records, and what it admits past its budget it
# evicts from its main FIFO, where the save's slices are the newest with full counters but the older values may
# have full counters too; on a disk of 16 slices, writing 16 evicted the first one written, the hottest. With half
# the budget, the other half is older in that FIFO and goes first.
SAVE_SHARE = 0.5


class Tiers:
    memory: MemoryTier
    disk: Disks
    purges: PurgeTable
    slice_size: int | None
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
        self.memory.room = self._spill_room

    def keep_in_memory(self, entry_key: str, version: str, index: int, data: bytes) -> bool:
        """Exclusive: a fill's slice offered to memory alone; True if memory keeps it (then not written to disk).
        Not while the write-back is full (_backed_up): then the fill writes it to disk, as inclusive tiers do."""
        name = slice_name(entry_key, version, index)
        if self._backed_up(len(data)) or not self.memory.put(name, data):
            return False
        self._hold(name, (entry_key, version, False))
        return True

    def took_from_disk(self, entry_key: str, version: str, index: int, data: bytes) -> None:
        """A slice read from disk, offered to memory; exclusive, one memory keeps leaves the disk."""
        self.took_named(slice_name(entry_key, version, index), entry_key, version, data)

    def took_named(self, name: str, entry_key: str, version: str, data: bytes) -> None:
        """took_from_disk() with the slice's name already made. Exclusive, it stays on disk while the write-back is
        full (_backed_up)."""
        if (self.exclusive and self._backed_up(len(data))) or not self.memory.put(name, data) or not self.exclusive:
            return
        self._hold(name, (entry_key, version, True))
        self._start(name, self._delete(name))

    def _backed_up(self, size: int) -> bool:
        """Would a slice of `size` that memory takes now evict one past the write-back's bound (dropped: fetched
        again from origin)? Then it is not offered to memory: a fill's goes to disk at once, and the fill waits for
        that write (fill memory gives its share back after its writes), so a burst of fills faster than the disk
        is held back as with inclusive tiers; a disk hit stays on disk. Before, each such slice evicted one that was
        dropped."""
        return self.spilling + size > self.spill_bound

    def _spill_room(self) -> bool:
        """memory.room: may the RSS bound's shrink (MemoryTier.set_limit) evict one more slice now? Only while the
        write-back can take a whole slice; the rest is evicted as its writes finish (_spill_write). It evicted all
        at once before, and what was past the bound was dropped: 2-74 MiB a 10 s run fetched again from origin
        (README "Exclusive tiers")."""
        return not self._backed_up(self.slice_size or self.memory.max_item)

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
        try:
            metrics.TIER_SPILLS.labels(await self._write_back(name, held, value, held[2])).inc()
        finally:
            self.spilling -= len(value)
            if self._writing.get(name) is value:
                del self._writing[name]
            self.memory.shrink()  # a shrink the write-back held back goes on with the room this write left

    async def _write_back(self, name: str, held: tuple[str, str, bool], value: bytes, lent: bool) -> str:
        """Write a slice only memory held to disk, if still its object's current copy: "written", "stale", or
        "dropped" (the write failed). `lent`: to the disk policy's main queue with a full counter."""
        if not await self._current(held[0], held[1]):
            return "stale"
        try:
            stored = await self.disk.put(name, value, lent=lent)
        except StorageError as exc:
            if not isinstance(exc, OutOfService | DiskFull):  # those storage.disks logged
                log.warning("slice only memory held not written to disk: %s", exc)
            stored = False
        return "written" if stored else "dropped"

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
        """At shutdown: spilled(), `seconds` at most, then what is left cancelled. What only memory holds is
        written after, by keep_on_stop."""
        try:
            async with asyncio.timeout(seconds):
                await self.spilled()
        except TimeoutError:
            for task in list(self._tier_tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tier_tasks.values(), return_exceptions=True)

    async def keep_on_stop(self, seconds: float) -> dict[str, int]:
        """At a graceful stop, after the spills: write the slices only memory holds to disk, hottest first, so a
        restart finds them there instead of fetching them from origin again. Bounded in time (`seconds`,
        cache.save_on_stop: no write starts after it, and one under way then is cancelled, as stop_spilling
        does) and in bytes (half the disk budget, SAVE_SHARE). One that fits after a larger one did not is
        written.
        One write at a time, each off the loop (Disks.put). Returns how many slices had each outcome (counted
        in TIER_STOP_SAVES too), and "bytes" written.

        Every slice goes to the disk's main queue with a full counter (`lent`), not only those memory took from
        disk as the write-back sends there: memory kept them over all else it saw, and written as new ones
        they would land in the disk's small FIFO (5% of its budget) and push each other out during this very
        save, the hottest first."""
        outcomes = dict.fromkeys(("written", "stale", "dropped", "late", "no_room", "bytes"), 0)
        if not self.exclusive:
            return outcomes
        began = time.monotonic()
        held = [(name, value, self._held[name]) for name, value in self.memory.hottest() if name in self._held]
        if held and seconds > 0:  # 0: off
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._save(held, outcomes)
        outcomes["late"] = len(held) - sum(outcomes[k] for k in ("written", "stale", "dropped", "no_room"))
        for outcome, n in outcomes.items():
            if n and outcome != "bytes":
                metrics.TIER_STOP_SAVES.labels(outcome).inc(n)
        log.info(
            "stopping: wrote %d of the %d slices only memory held to disk (%d bytes) in %.2f s; not written: %d"
            " past cache.save_on_stop (%g s), %d past the disk budget, %d stale, %d failed",
            outcomes["written"], len(held), outcomes["bytes"], time.monotonic() - began, outcomes["late"], seconds,
            outcomes["no_room"], outcomes["stale"], outcomes["dropped"],
        )  # fmt: skip
        return outcomes

    async def _save(self, held: list[tuple[str, bytes, tuple[str, str, bool]]], outcomes: dict[str, int]) -> None:
        """keep_on_stop's writes, in order, within the disk budget; each outcome counted into `outcomes`."""
        room = int(self.disk.budget_bytes * SAVE_SHARE)
        for name, value, whose in held:
            if len(value) > room:
                outcomes["no_room"] += 1
                continue
            outcome = await self._write_back(name, whose, value, True)
            outcomes[outcome] += 1
            if outcome == "written":
                room -= len(value)
                outcomes["bytes"] += len(value)
