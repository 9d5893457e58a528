"""The Store's purge side: the purge table and its log, the cluster's numbering of purges, and the change counter
that tells the other workers of a purge or an invalidation.

A mixin of Store (storage.store), not a collaborator: the table is read on every lookup as `store.purges`, and a
catch-up drops the metadata the Store holds, so both sides share one object.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path

from edgecache.core.keys import PrimaryRecord
from edgecache.core.purge import (
    HORIZON,
    Entry,
    PurgeTable,
    Retired,
    SyncLog,
    Vector,
    adopt_line,
    entry_line,
    me_line,
    prune_line,
)
from edgecache.core.purgeprune import Pruning
from edgecache.errors import StorageError
from edgecache.storage.disks import Disks
from edgecache.storage.epoch import Epoch, key_hash
from edgecache.storage.purgelog import PurgeLog

log = logging.getLogger("edgecache.storage.store")  # the Store's lines, under the name they had before this module


# What of the purge being applied in this task its disk could not record (its primary record, its purge log line):
# such a purge holds until a restart only, and the admin API does not confirm it (admin.purge). Per task, so other
# purges and fills failing meanwhile are not counted as this one's.
UNKEPT: ContextVar[list[str] | None] = ContextVar("edgecache_unkept", default=None)


def not_kept(what: str) -> None:
    unkept = UNKEPT.get()
    if unkept is not None:
        unkept.append(what)


class Purging:
    disk: Disks

    def __init__(self, directory: Path) -> None:
        self.purges = PurgeTable()
        self.purge_log = PurgeLog(directory / "purges.log")
        self._purge_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="purge")  # in order (purgelog)
        self.sync = SyncLog()  # the purges applied here, as the cluster numbers them (cluster.purgesync)
        self.horizon = HORIZON  # core.purgeprune's, for this node's pruning and its answers to peers (tests shorten it)
        # Purges being applied, each with what is set once it is applied or retracted: a copy arriving meanwhile
        # waits for it (taken) and is not applied twice.
        self._taking: dict[tuple[str, int], tuple[Entry, asyncio.Event]] = {}
        self._issued = 0  # the last number this node gave a purge it took from an operator
        self.epoch: Epoch | None = None  # with shared: the change counter all workers map
        self._seen_epoch = 0  # the other workers' count of changes and replacements this one has caught up on
        self._seen_counts: tuple[int, ...] = ()  # every slot's counts (Epoch.counts) when it last caught up
        self._slot = 0  # this worker's in the epoch
        # How many times catch_up() forgot what this process held: a lookup that loaded from the disk before the
        # last time must load again before it takes "not held" for "not stored" (fastpath.FastPath.loads).
        self.forgotten = 0
        # With peers (watch_pauses): when the loop last ran, and what to do after a pause longer than the limit.
        self.awake = 0.0
        self._pause_limit = 0.0
        self._on_pause: Callable[[], None] | None = None
        # When cache.disks last changed (storage.placed): what was stored before is revalidated (note_placement).
        self.placed_at = 0.0

    def close_purge_log(self) -> None:
        """Blocking: an append under way finishes first. Then the purge log's thread ends: left to the garbage
        collector, a closed store's thread lived on until a collection found the store (held in reference cycles),
        one more thread for each node opened in the process (a node reopened; every test of the suite)."""
        self._purge_io.shutdown(wait=True)

    def purged(self, site: str, host: str, path: str, record: PrimaryRecord | None) -> tuple[str, float]:
        """An object's purge scope (the generations of the purged site and directories above it, part of its entry
        key) and the time before which a stored answer of it is soft-purged: the latest of its scopes' soft
        purges, its own (on its record) and the last change of the disks. The one place they are combined
        (lookups, fills, their heads)."""
        scope, soft = self.purges.lookup(site, host, path)
        soft = max(soft, self.placed_at)
        return scope, max(soft, record.soft_before) if record is not None else soft

    def _forget_held(self) -> None:
        """Drop what this process holds in memory of what the disk tier has (Store)."""
        raise NotImplementedError

    def _forget_keys(self, hashes: list[int]) -> None:
        """Drop what this process holds of the keys with these hashes (epoch.key_hash) (Store)."""
        raise NotImplementedError

    # --- what other workers changed -------------------------------------------------------------------------

    def _changed(self) -> None:
        """Tell the other workers (after the disk has the change): they drop what they hold in memory."""
        if self.epoch is not None:
            self.epoch.bump(self._slot)

    def replaced(self, *keys: str) -> None:
        """This worker stored a new copy of an object over another one (on the disk now), under these keys (its
        entry key and primary): the other workers, which may hold the old one's metadata in memory, forget it
        before their next request. A copy of the same bytes (the same strong ETag) needs no telling: the old
        metadata serves the same bytes."""
        if self.epoch is not None:
            self.epoch.replace(self._slot, tuple(key_hash(k) for k in keys))

    def attach_epoch(self, epoch: Epoch, worker: int = 0) -> None:
        """Share `epoch` with the other workers as worker `worker` (its slot there)."""
        self.epoch = epoch
        self._slot = epoch.slot(worker)
        self._seen_epoch = epoch.others(self._slot)
        self._seen_counts = epoch.counts()

    def stale(self) -> bool:
        """Another worker purged or invalidated something since this one last looked (one memory load). Called
        before each request is looked up: a pause of this process just ended is noticed here too (watch_pauses)."""
        if self._on_pause is not None:
            self.tick()
        return self.epoch is not None and self.epoch.others(self._slot) != self._seen_epoch

    # --- pauses of this process -------------------------------------------------------------------------------

    def watch_pauses(self, limit: float, paused: Callable[[], None]) -> None:
        """With peers: this process stopped for longer than `limit` (SIGSTOP, a frozen VM, a stalled loop) may
        have missed a purge that a peer could not pass on meanwhile, and no peer went down in its own view. So
        `paused` is called once the loop runs again, before a request is looked up, if tick() has not been called
        within `limit` (the loop calls tick() more often than that while it runs)."""
        self._pause_limit, self._on_pause = limit, paused
        self.awake = time.monotonic()

    def set_pause_limit(self, limit: float) -> None:
        self._pause_limit = limit

    def tick(self) -> None:
        """The loop runs now (its watch, and every request): after a gap longer than the limit, a pause ended."""
        now = time.monotonic()
        if self._on_pause is not None and now - self.awake > self._pause_limit:
            self._on_pause()
        self.awake = now

    async def catch_up(self) -> None:
        """After stale(): forget what another worker changed, so the next lookups go to the disk tier, which has
        it. A purge or an invalidation: all the records and metadata held in memory, and the purge table is read
        again; only replacements: the objects they name."""
        epoch = self.epoch
        if epoch is None:
            return
        counts, slot = epoch.counts(), self._slot
        seen = epoch.others_in(slot, counts)
        if seen == self._seen_epoch:
            return
        hashes = None
        if epoch.changes(slot, counts) == epoch.changes(slot, self._seen_counts):
            hashes = epoch.replaced(slot, self._seen_counts, counts)
        self.forgotten += 1  # a lookup that loaded before this must load again (fastpath.FastPath.loads)
        if hashes is None:
            self._forget_held()
            await self.load_purges()
        else:
            self._forget_keys(hashes)
        self._seen_epoch, self._seen_counts = seen, counts

    # --- purges of whole sites and directories ------------------------------------------------------------

    async def load_purges(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            others = [d / self.purge_log.path.name for d in self.disk.paths[1:]]
            found = await loop.run_in_executor(self._purge_io, self.purge_log.read_newest, others)
        except OSError as exc:
            log.warning("purge table not read: %s", exc)
            return
        table: PurgeTable | None = found[0] if found is not None else None
        if found is not None:
            self.sync = found[1].dated(time.time(), self.sync.seen)  # (read again after every change)
        else:  # no file yet: the disk tier's copy, where versions before this one kept the table
            try:
                raw = await self.disk.get("purge-table")
            except StorageError:
                return
            table = PurgeTable.from_bytes(raw) if raw is not None else None
        if table is not None:
            self.purges = replace(table, unsure_before=self.purges.unsure_before)

    def doubt(self, since: float | None) -> None:
        """From `since` on, this node may have missed purges: what it stored before then is revalidated before it
        is served (PurgeTable.unsure_before). None: it has caught up."""
        value = since or 0.0
        if value != self.purges.unsure_before:  # a new table object: the fast path decides its hits again
            self.purges = replace(self.purges, unsure_before=value)

    def issue(self, node_id: str, kind: str, site: str, host: str, path: str, soft: bool) -> Entry:
        """The identity for a purge an operator gives this node (numbered before anything awaits, so two purges
        at once never share a number)."""
        if not self.sync.me.startswith(node_id + "~"):
            self.sync = replace(self.sync, me=f"{node_id}~{secrets.token_hex(4)}")
            self._issued = 0
        me = self.sync.me
        self._issued = max(self._issued, self.sync.vector.get(me, 0), *self.sync.above.get(me, ())) + 1
        return Entry(me, self._issued, kind, site, host, path, soft)

    def claim(self, entry: Entry) -> bool:
        """Is `entry` new here? Then it is being applied from now on, and a copy that arrives meanwhile is not."""
        ident = (entry.origin, entry.seq)
        if self.sync.has(*ident) or ident in self._taking:
            return False
        self._taking[ident] = (entry, asyncio.Event())
        return True

    async def taken(self, entry: Entry) -> bool:
        """After claim() said no: whether `entry` was being applied, once that application has ended (applied,
        or retracted: then it may be claimed again). A copy answered at once would be confirmed to the node
        that passed it on before this one had changed anything on its disk."""
        taking = self._taking.get((entry.origin, entry.seq))
        if taking is None:
            return False
        await taking[1].wait()
        return True

    def applying(self) -> tuple[Entry, ...]:
        """The purges claimed here and not yet in the purge log (`sync`): a URL's changes the object's record first,
        and enters the log after the record's write to the disk (note_purge)."""
        return tuple(entry for entry, _ in self._taking.values())

    def _taken(self, entry: Entry) -> None:
        taking = self._taking.pop((entry.origin, entry.seq), None)
        if taking is not None:
            taking[1].set()

    def retract(self, entry: Entry) -> None:
        """`entry` was not applied (its purge was refused before anything changed): as if never claimed, and,
        when it was the last one this node numbered, its number is given again."""
        self._taken(entry)
        if entry.origin == self.sync.me and entry.seq == self._issued:
            self._issued -= 1

    async def note_purge(self, entry: Entry) -> None:
        """Record a claimed purge that changed no mark (a URL's: its record changed already) as applied."""
        now = time.time()
        await self._log_purge(entry_line(entry, now), entry, now)

    async def adopt(self, vector: Vector, retired: Mapping[str, Retired] | None = None) -> None:
        """After a reset (every site purged hard): the purges `vector` counts, and those of the origins a peer
        `retired`, are as good as applied."""
        now = time.time()
        self.sync = self.sync.adopted(vector, now, retired)
        await self._log_purge(adopt_line(vector, now, retired), None)

    async def prune(self, pruning: Pruning, now: float) -> None:
        """Drop the origins core.purgeprune.prunable found nothing can need any more (cluster.purgesync)."""
        self.sync = self.sync.pruned(pruning.origins, pruning.forget, now)
        await self._log_purge(prune_line(pruning.origins, pruning.forget, now), None)

    async def _log_purge(self, line: bytes, entry: Entry | None, at: float = 0.0) -> None:
        if entry is not None:
            self.sync = self.sync.added(entry, at)
        if self.sync.me and self.purge_log.me != self.sync.me:
            line = me_line(self.sync.me) + line
            self.purge_log.me = self.sync.me
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._purge_io, self.purge_log.append, line, self.purges, self.sync
            )
            self._changed()
        except OSError as exc:
            log.warning("purge log write failed (the purge holds until restart): %s", exc)
            not_kept("the purge log")
        finally:
            if entry is not None:
                self._taken(entry)

    async def purge_scope(
        self, scope: tuple[str, str, str], soft: bool, now: float, entry: Entry | None = None, strict: bool = True
    ) -> None:
        """Raises core.purge.TableFull, before anything changes, when the table has no room for the scope (unless
        not `strict`: a purge another node took must be applied here too). `entry`: the purge's identity, claimed."""
        generation, soft_at = (None, now) if soft else (secrets.token_hex(8), None)
        table = self.purges
        if strict:
            self.purges = table.purged(scope, generation, soft_at)
        else:
            self.purges = table.purged(scope, generation, soft_at, None)
        at = time.time()
        await self._log_purge(PurgeTable.op(scope, generation, soft_at, entry, at), entry, at)
