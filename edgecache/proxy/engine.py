"""The cache engine: starts fills from origin and runs them into the store, one fill per run of missing slices.

The handler decides what to do with a request; the engine does the I/O of getting bytes. A fill asks the
origin (or, in a cluster, another node: proxy.clusterfill), has its response head judged (proxy.fillhead), and
pumps the body into the tiers a slice at a time while its readers (proxy.reading) stream it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from typing import Any

from edgecache import metrics
from edgecache.cluster.view import ClusterView
from edgecache.core import entry, objectsize, ranges
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import OriginRequest, Validator, fill_request, unkeyed_fields
from edgecache.core.headers import Headers
from edgecache.core.keys import PrimaryRecord, entry_key, keyed_fields
from edgecache.errors import OriginError, Overtaken, PeerCut, StorageError, VersionChanged
from edgecache.proxy import clusterfill, leasing
from edgecache.proxy.fill import Fill, FillHead
from edgecache.proxy.fillhead import OVERTAKEN, answers, cut_whole, judge_head, rejoined, replaces, within_run
from edgecache.proxy.fillmemory import FillBudget, Taken
from edgecache.proxy.fillregistry import FillRegistry
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.origin import OriginClient, OriginResponse, read_chunks
from edgecache.proxy.revalidating import (
    by_another_worker,
    drop_lease,
    end_unkept,
    held_on,
    let_go_at_head,
    let_go_if_purged,
    not_purged,
)
from edgecache.storage.ghosts import Ghosts
from edgecache.storage.leases import REVALIDATING
from edgecache.storage.store import Store, slice_name

log = logging.getLogger(__name__)


# What a stop waits at most for the disk writes and spills under way, all told (Engine.close): the parent kills a
# worker supervisor.KILL_AFTER (5 s) past its drain and cache.save_on_stop; these waits took 10 s each.
STOP_WAITS = 2.0


# Why a fill's answer is not stored, when the readers of a fill nobody streams (a slice reader's) start again as a
# miss: a purge overtook it, or the object turned out to be a copy taken only whole (its origin ignores Range) larger
# than the largest stored whole (core.objectsize), which a stored copy's slice reader cannot be served from.
# A purge's is no new version at the origin (core.churn counts it apart).
RESTARTS: dict[str, type[VersionChanged]] = {OVERTAKEN: Overtaken, objectsize.TOO_LARGE: VersionChanged}


class _Unread(OriginError):
    """Nobody reads a fill of a whole object any more (Engine.unread)."""


class Engine:
    def __init__(
        self,
        store: Store,
        origin: OriginClient,
        slice_size: int,
        fill_slices: int,
        max_object: int = 2**62,
        budget: FillBudget | None = None,
    ) -> None:
        self.store = store
        self.origin = origin
        self.slice_size = slice_size
        self.fill_slices = fill_slices
        # The largest copy stored whole (cache.max_object_size; a site's own: core.objectsize). One over it is served
        # to its clients, never stored; a body of unknown length that passes it has what was stored of it dropped.
        self.max_object = max_object
        self.fills = FillRegistry()
        self.budget = budget or FillBudget(2**62, 0)  # what all fills together may hold (cache.fill_memory)
        self._tasks: set[asyncio.Task[None]] = set()  # fills: cancelled at close
        self._writes: set[asyncio.Task[None]] = set()  # disk writes of complete slices: finished at close
        self.ghosts = Ghosts()  # slices the memory tier evicted: a miss on one is "evicted", not "cold"
        store.memory.on_evict = self.ghosts.add
        self.cluster: ClusterView | None = None  # set in a cluster: a miss here asks the previous owner first
        self._reading: Counter[str] = Counter()  # answers being sent from an entry's bytes, by entry key

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task[None]] | None = None
    ) -> asyncio.Task[None]:
        group = self._tasks if tasks is None else tasks
        task = asyncio.ensure_future(coro)
        group.add(task)
        task.add_done_callback(group.discard)
        return task

    @contextlib.contextmanager
    def reading(self, entry_key: str) -> Iterator[None]:
        """While an answer is sent from an entry's bytes, wherever they come from (its fills, memory or disk): the
        entry's fills of the whole object go on (unread)."""
        self._reading[entry_key] += 1
        for fill in self.fills.of(entry_key):
            fill.attended = True
        try:
            yield
        finally:
            self._reading[entry_key] -= 1
            if not self._reading[entry_key]:
                del self._reading[entry_key]

    def unread(self, fill: Fill, end: int | None) -> bool:
        """Does nobody read the fill of a whole object now that someone has (or the request that started it has
        gone)? Then it ends at the slice boundary it has reached, as nginx's slice module and ATS end theirs;
        unless no more than a run of slices (what one miss may fetch: fill_slices) is left before its `end`, or it
        writes a copy stored only whole that other workers may be reading. A request that joined it and is still to
        read it (Fill.expecting) is one of its readers already."""
        if fill.last_index is not None or fill.background or not fill.attended or fill.readers or fill.expecting:
            return False
        if end is not None and end - fill.received <= self.fill_slices * self.slice_size:
            return False
        if end is not None and REVALIDATING in fill.leases:
            # Its lease held to the end (revalidating.holds_to_the_end): another worker's viewers may read the copy
            # slice by slice (whole_by_another_worker), unseen here, and nothing but this fill can complete a copy
            # stored only whole. Stopped, their answers were cut (tests/e2e/test_worker_whole_left).
            return False
        return not self._reading.get(fill.entry_key)

    async def flush(self) -> None:
        """Until every slice received so far is written to the disk tier."""
        while self._writes:
            await asyncio.wait(list(self._writes))

    async def close(self, save_seconds: float = 0.0) -> None:
        """`save_seconds`: exclusive tiers write what only memory holds to disk for this long at most, once the
        fills have stopped (storage.tiers.keep_on_stop; cache.save_on_stop)."""
        # A slice already received is worth keeping: let its disk write finish, then stop the fills. The writes and
        # spills share STOP_WAITS, so that a stop on a stalled disk still saves memory and ends before the kill.
        began = time.monotonic()
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=STOP_WAITS)
        await self.store.stop_spilling(max(0.0, began + STOP_WAITS - time.monotonic()))  # exclusive tiers
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writes:  # the leases the fills let go of (_run_fill): the process may live on, saving memory
            await asyncio.wait(list(self._writes), timeout=max(0.0, began + STOP_WAITS - time.monotonic()))
        await self.store.keep_on_stop(save_seconds)

    # --- starting fills ------------------------------------------------------------------------------------

    def fill_for(
        self, req: FillRequest, first: int, last: int | None, validate: ObjectMeta | None = None, whole: bool = False
    ) -> tuple[Fill, bool]:
        """The fill a request reads from slice `first` (joined, or started for first..last), and whether it was
        started for it: then the request streams it whatever the answer (a private one is its alone). `whole`: only a
        fill of the object to its end is joined, and one started is no cold miss (proxy.wholefill: it replaces a run's
        fill, whose head is in, so another worker has nothing to collapse it into)."""
        existing = self.fills.find(req, first, whole=whole)
        if existing is not None and answers(existing, req):
            return existing, False
        if last is not None:  # stop the run before a slice someone else is already fetching
            for index in range(first + 1, last + 1):
                if self.fills.find(req, index) is not None:
                    last = index - 1
                    break
        fill = self.start_fill(req, first, last, validate=validate, cold=validate is None and not whole)
        fill.streamed = True
        return fill, True

    def revalidate_in_background(self, req: FillRequest, meta: ObjectMeta) -> None:
        """The stale entry answered now (stale-while-revalidate) is revalidated meanwhile, once: nobody reads the
        fill, whose 304 or new version is stored for the next request."""
        if self.fills.find(req, 0) is None:
            self.start_fill(req, 0, None if meta.whole else 0, validate=meta, background=True)

    def start_fill(
        self,
        req: FillRequest,
        first: int,
        last: int | None,
        validate: ObjectMeta | None = None,
        shared: bool = True,
        background: bool = False,
        cold: bool = False,
    ) -> Fill:
        """One origin request for slices first..last (last None: the whole object, no Range sent); `background`:
        the revalidation of `validate`, served stale meanwhile (revalidate_in_background); `cold`: a miss of an
        object nothing is stored of, asked of the origin once between the workers (proxy.revalidating)."""
        fill = Fill(req.entry_key, first, last, self.slice_size)
        fill.attended = bool(self._reading.get(req.entry_key))  # for a reader of the entry already
        fill.background = background
        fill.peer_first = req.spread_from is not None or (validate is None and self.cluster is not None)
        metrics.FILLS.inc()
        if shared:
            self.fills.add(fill)
        self._spawn(self._run_fill(fill, req, validate, cold))
        return fill

    async def _run_fill(self, fill: Fill, req: FillRequest, validate: ObjectMeta | None, cold: bool) -> None:
        try:
            await self._fill(fill, req, validate, cold)
        except asyncio.CancelledError:
            fill.fail(OriginError("fill cancelled"))
            raise
        except OriginError as exc:
            fill.fail(PeerCut.of(exc))  # a peer's body that broke: its readers that sent nothing try again
            # Gone from memory in the next turn, before anyone asks again.
            if (cut := cut_whole(fill)) is not None:
                self._spawn(self.store.drop_version(fill.entry_key, cut), self._writes)
        except Exception as exc:  # a bug must fail the readers, never leave them waiting
            log.exception("fill of %s failed", req.entry_key)
            fill.fail(OriginError(f"internal error: {exc}"))
        finally:
            self.fills.remove(fill)
            # Cancelled too (a stop: close waits for these), or the other workers wait out their time.
            if (names := leasing.unstored(self.store, fill)) or REVALIDATING in fill.leases:
                self._spawn(leasing.let_go_all(self.store, fill, names), self._writes)
        if fill.background and validate is not None:
            await end_unkept(self.store, fill, req.entry_key, validate)

    async def _fill(self, fill: Fill, req: FillRequest, validate: ObjectMeta | None, cold: bool) -> None:
        if (validate is not None or cold) and await by_another_worker(self.store, self.fills, fill, req, validate):
            return
        size, last = self.slice_size, fill.last_index
        asked = None if last is None else ranges.ByteRange(fill.first_index * size, (last + 1) * size - 1)
        span = None if asked is None else (asked.first, asked.last)
        checked = Validator(validate.etag, validate.last_modified) if validate is not None else None
        fields = keyed_fields(req.entry_key)  # of the copy it extends: the request may be decided under another Vary
        unkeyed = unkeyed_fields(req.site.forward_fields, req.headers, tuple(name for name, _ in fields))
        sent = fill_request(req.key, fields, req.site.origin_host, span, checked, unkeyed, self.origin.via)
        # From here on the request's fields are the ones sent: the answer is stored under their variant.
        viewer, req = req.headers, replace(req, headers=sent.headers)
        resp, request_time = await self._ask(fill, req, sent, asked, validate, viewer)
        try:
            primary = req.record_key
            if self.store.stale():  # another worker purged meanwhile: judged by what this one held, the fill
                await self.store.catch_up()  # would be stored, and its record written over the purge's
            if resp.status == 304:
                existing = validate  # a 304 need not repeat Vary: it is about the entry we asked to validate
            else:
                record = PrimaryRecord(req.generation, entry.vary_names(resp.headers))
                existing = await self.store.get_meta(entry_key(primary, record, req.headers, req.scope))
            # judge_head() tells a fill an invalidation overtook by the record this process holds: one let go
            # meanwhile (the RSS bound, another worker's purge caught up on) is read back from disk first.
            await self.store.get_record(primary)
            times, limit = (request_time, time.time()), objectsize.limit_of(req.policy, self.max_object)
            head = judge_head(
                self.store, self.slice_size, resp.status, resp.headers, asked, req, times, existing, limit
            )
            if resp.peer is not None:
                head = replace(head, peer=resp.peer)
            if fill.last_index is not None and not within_run(fill, head, self.slice_size):
                fill.first_index, fill.last_index = 0, None  # the origin sent more than the run: the whole object
            pumped = head.status != 304 and (head.store or fill.streamed)
            # Taken before the head is given to anyone: a fill that cannot have it fails cleanly (503), instead of
            # cutting answers already begun.
            taken = await self.budget.take(fill, head) if pumped else None
            writes: list[asyncio.Task[None]] = []  # the fill's disk writes: its memory is given back after them
            try:  # from the take on: a fill that fails anywhere after it (its claim too) gives its share back
                head = rejoined(self.store, head)  # a turn waited for: the copy may have been named meanwhile
                head = await leasing.claimed(self.store, fill, head, req, self.fill_slices, self.store.lease_seconds)
                was, req = req.entry_key, await self._take_head(fill, req, head)
                if replaces(existing, validate, was, head) and req.spread_from is None:
                    self.store.replaced(was, req.entry_key, req.primary)  # on the disk now: the others drop the old
                if head.status == 304:
                    return
                if not pumped:
                    # Nobody may share this body and nobody will stream it (a background revalidation, a slice
                    # reader): taking it in would only wait, at the fill's bound, for a reader that never comes.
                    if (restart := RESTARTS.get(head.reason)) is not None:  # its readers start again, as a miss
                        raise restart(f"the object's answer is not stored ({head.reason})")
                    raise OriginError("the answer cannot be stored and nobody streams it", retryable=False)
                await self._pump(fill, head, resp, req, writes)
                await self._let_go_stored(fill, writes)
            finally:
                if taken is not None:
                    self._give_back(taken, fill, writes)
        finally:
            resp.release()

    def _give_back(self, taken: Taken, fill: Fill, writes: list[asyncio.Task[None]]) -> None:
        if (later := self.budget.give_back(taken, fill, writes)) is not None:
            self._spawn(later)

    async def _ask(
        self,
        fill: Fill,
        req: FillRequest,
        sent: OriginRequest,
        asked: ranges.ByteRange | None,
        validate: ObjectMeta | None,
        viewer: Headers,
    ) -> tuple[OriginResponse, float]:
        """The answer to a fill's request and when it was asked: the owner's for a spread copy, else the previous
        owner's cache's (a look-aside, never for a revalidation; `viewer`: the fields of the request it is for),
        else, when those gave none, the origin's: `fill` is one a peer's cache answers no more from then on."""
        request_time = time.time()
        if req.spread_from is not None:
            assert self.cluster is not None
            resp = await clusterfill.from_owner(self.cluster, self.origin, req, sent, asked, viewer, validate)
        elif validate is None:
            resp = await clusterfill.look_aside(self.cluster, self.origin, self.store, req, sent, asked, viewer)
        else:
            resp = None
        if resp is None:
            request_time, fill.peer_first = time.time(), False  # asked of the origin: no peer answers it now
            resp = await self.origin.request(req.site, sent.method, sent.target, sent.headers)
        fill.addr = resp.addr  # what every request reading it logs as its upstream_addr
        return resp, request_time

    async def _take_head(self, fill: Fill, req: FillRequest, head: FillHead) -> FillRequest:
        """Give the fill its head, under the entry key the head names (the request, so keyed, is returned), with
        the record and metadata of what is kept visible first."""
        self.fills.remove(fill)
        # The response's own Vary decides where it is stored; those with other header values must not join.
        fill.entry_key = head.entry_key
        # A 304 brings no bytes to read: joined now, it would answer a request the origin was never asked about,
        # though the entry may need revalidating for each (no-cache, max-age=0), while its copy is being written.
        if head.store and head.status != 304:  # an answer not stored has no bytes to give one that comes later
            self.fills.add(fill)
        req = replace(req, entry_key=head.entry_key)
        primary = req.record_key
        keep = (head.status == 304 and head.kept) or (head.store and head.meta.length >= 0)
        # Asked before anything is remembered: a record remembered here would be the one it compares with (the
        # object's, forgotten when a request caught up on the purge first, is made again from the fill's).
        if keep and req.spread_from is None and not await not_purged(self.store, primary, req):
            keep = False  # its readers, who asked before the purge, still get its answer; nobody else
        known = self.store.peek_record(primary)
        record = replace(known or PrimaryRecord(req.generation), vary=head.meta.vary)
        if keep:  # visible before anyone hears of the head, so the next request is a hit
            self.store.remember_record(primary, record)
            self.store.remember_meta(req.entry_key, head.meta)
        fill.set_head(head)
        if req.spread_from is None:  # leased before the metadata is on the disk, where other workers read both
            await self._lease_ahead(fill, head, head.start // self.slice_size, req)
        if keep and req.spread_from is None:  # a spread copy is kept in memory only
            if record != known:  # the next slice of a stored object brings the same record
                await self.store.put_record(primary, record)
            # A 304's is written whatever the last write: the other workers revalidate from it (proxy.revalidating).
            await self.store.put_meta(req.entry_key, head.meta, lazy=head.status != 304)
        await let_go_at_head(self.store, fill, head)  # the others waiting on it read the disk now
        return req

    async def _let_go_stored(self, fill: Fill, writes: list[asyncio.Task[None]]) -> None:
        """A copy stored only whole kept the entry's lease past its head (holds_to_the_end): let go once the fill's
        slices are written, where the workers waiting on it read them. A fill stopped early (unread) lets go too."""
        if REVALIDATING in fill.leases:
            if writes:
                await asyncio.wait(writes)
            await drop_lease(self.store, fill)

    async def _pump(
        self, fill: Fill, head: FillHead, resp: OriginResponse, req: FillRequest, writes: list[asyncio.Task[None]]
    ) -> None:
        """`writes`: where the fill's disk writes go, what dropping its slices and giving back its memory wait for."""
        version = head.meta.slice_version
        stored: list[int] = []

        def on_complete(index: int, data: bytes) -> None:
            if head.store and fill.kept and not self._past_bound(fill, head, index * size + len(data), limit):
                stored.append(index)
                if self._memory_only(req, version, index, data):
                    fill.mark_durable(index, in_memory=True)
                    return
                writes.append(self._spawn(self._write_slice(fill, req.entry_key, version, index, data), self._writes))

        if head.store:
            fill.from_store = functools.partial(self._stored_slice, req.entry_key, head.meta)
        fill.waiting_for_reader = resp.set_aside
        fill.kept = head.store  # not stored: what every stream has read goes (Fill._release_old)
        size, limit = self.slice_size, objectsize.limit_of(req.policy, self.max_object)
        reached = fill.received // size  # the slice boundary last passed: where the fill may stop (unread)
        try:
            async for chunk in read_chunks(resp):
                await held_on(self.store, fill)  # a whole copy's lease lasts while its bytes come
                if head.end is not None and fill.received + len(chunk) > head.end:
                    raise OriginError("origin sent more bytes than it announced", retryable=False)
                for lo in range(0, len(chunk), size):  # a slice's worth at a time, each once the fill has room
                    if fill.received // size != reached:
                        reached = fill.received // size
                        if req.spread_from is None:
                            await self._lease_ahead(fill, head, reached, req)
                        if self.unread(fill, head.end):
                            raise _Unread(f"nobody reads the fill past {fill.received} bytes")
                    await fill.room()
                    fill.feed(chunk if len(chunk) <= size else memoryview(chunk)[lo : lo + size], on_complete)
            if head.end is not None and fill.received != head.end:
                raise OriginError(f"origin body cut at {fill.received} of {head.end} bytes")
        except OriginError as exc:
            if head.meta.length < 0 and stored:  # a cut body of unknown length: its slices name no object
                self._spawn(self._forget(req.entry_key, version, stored, writes, None), self._writes)
            if isinstance(exc, _Unread):  # the slices complete so far are stored; the origin connection goes
                log.info("%s: %s", req.entry_key, exc)
                resp.close()
                fill.stop()
                return
            raise
        fill.finish(on_complete)
        if head.store and head.meta.length < 0 and fill.kept:
            await self._store_length(req, head.meta, fill.received, stored, writes)
        elif head.store and stored:  # past the bound: what was stored of it, once its streams no longer read it
            self._spawn(self._forget(req.entry_key, version, stored, writes, fill), self._writes)

    async def _lease_ahead(self, fill: Fill, head: FillHead, reached: int, req: FillRequest) -> None:
        """At the head and each slice boundary: the leases of the slices coming, and a whole copy's let go of once
        its object was purged (revalidating.let_go_if_purged)."""
        await let_go_if_purged(self.store, fill, head, req)
        await leasing.lease_ahead(self.store, fill, head, reached, self.fill_slices, self.store.lease_seconds)

    def _memory_only(self, req: FillRequest, version: str, index: int, data: bytes) -> bool:
        """Offer a filled slice to memory; True where it goes no further: a spread copy (in memory only, never
        written to disk), or with exclusive tiers one memory keeps (written to disk once evicted: storage.tiers)."""
        if self.store.exclusive and req.spread_from is None:
            return self.store.keep_in_memory(req.entry_key, version, index, data)
        self.store.put_slice_memory(req.entry_key, version, index, data)
        return req.spread_from is not None

    async def _write_slice(self, fill: Fill, entry_key: str, version: str, index: int, data: bytes) -> None:
        # A slice the disk refused is marked so: the fill lets it go only once every stream has read it (a stream
        # reads a slice let go back from the store), and a reader of it by range fetches it again.
        stored = await self.store.put_slice_disk(entry_key, version, index, data)
        fill.mark_durable(index, stored)
        if not stored:
            self._never_whole(fill)
        else:  # a whole copy's lease, kept to its end, lasts while its slices land
            await held_on(self.store, fill)

    def _never_whole(self, fill: Fill) -> None:
        """The copy `fill` writes will never be complete (a slice the disk refused, a body past the limit): a
        whole copy's lease, kept to its end (holds_to_the_end), is let go now; the other workers would wait out the
        body for a copy they may not take (revalidating._complete), then ask the origin anyway."""
        if REVALIDATING in fill.leases:
            self._spawn(drop_lease(self.store, fill), self._writes)

    async def _stored_slice(self, entry_key: str, meta: ObjectMeta, index: int) -> bytes | None:
        """A complete slice a fill let go, read back while the object's length may still be unknown (a slice the
        fill lets go is never its last, so it is a whole slice)."""
        sized = replace(meta, length=(index + 1) * meta.slice_size)
        data = self.store.slice_from_memory(entry_key, sized, index)
        return data if data is not None else await self.store.slice_from_disk(entry_key, sized, index)

    async def _store_length(
        self, req: FillRequest, meta: ObjectMeta, length: int, stored: list[int], writes: list[asyncio.Task[None]]
    ) -> None:
        """A body of unknown length ended whole: its metadata, with the length, makes its slices an object.

        Visible to this process before the first await that leaves the loop (not_purged does not, unless another
        worker changed something or the record was let go), so a client that read the body to its end and asks
        again is answered from the cache."""
        meta = replace(meta, length=length)
        primary = req.record_key
        if not await not_purged(self.store, primary, req):  # invalidated meanwhile, here or by another worker
            await self._forget(req.entry_key, meta.slice_version, stored, writes, None)
            return
        current = self.store.peek_record(primary)
        record = replace(current or PrimaryRecord(req.generation), vary=meta.vary)
        self.store.remember_record(primary, record)
        self.store.remember_meta(req.entry_key, meta)
        if req.spread_from is None:  # a spread copy is kept in memory only
            await self.store.put_record(primary, record)
            await self.store.put_meta(req.entry_key, meta)

    def _past_bound(self, fill: Fill, head: FillHead, received: int, limit: int) -> bool:
        """Does a slice that ends at `received` take a body of unknown length past the largest copy stored whole? Then
        nothing more of the fill is stored (Fill.kept), and no request joins it: one would need the slices it drops
        (_forget)."""
        if head.meta.length >= 0 or objectsize.fits(received, limit):
            return False
        log.info("%s: a body of unknown length past %d bytes: not stored", fill.entry_key, limit)
        metrics.TOO_LARGE.inc()
        fill.kept = False
        self.fills.remove(fill)
        self._never_whole(fill)
        return True

    async def _forget(
        self, entry_key: str, version: str, indices: list[int], writes: list[asyncio.Task[None]], fill: Fill | None
    ) -> None:
        """Drop slices of a body that will never be stored, once its own disk writes (already started) are done,
        and once `fill`'s streams no longer read them (a body past the largest copy stored whole is still sent whole).

        Only its own: waiting for every write in flight made two fills cut in the same turn wait for each other.
        """
        if (stored := self.store.peek_meta(entry_key)) is not None and stored.slice_version == version:
            return  # more of a copy already stored (same strong ETag): its slices are its own
        if writes:
            await asyncio.wait(writes)
        if fill is not None:
            await fill.idle()
        for index in indices:
            name = slice_name(entry_key, version, index)
            self.store.memory.delete(name)
            with contextlib.suppress(StorageError):
                await self.store.disk.delete(name)
