"""The cache engine: finds slices in the tiers or in-flight fills, and starts fills from origin when needed.

The handler decides what to do with a request; the engine does the I/O of getting bytes: one fill per run of
missing slices, joined by every concurrent reader, with the version of each fill checked against the metadata
the reader is serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any

from edgecache import metrics
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import entry, lookaside, ranges
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import OriginRequest, Validator, fill_request, unkeyed_fields
from edgecache.core.freshness import Policy, merge_304, storable, strip_for_storage
from edgecache.core.headers import Headers, get_first
from edgecache.core.hop import FIELD as HOP
from edgecache.core.keys import CacheKey, PrimaryRecord, entry_key, variant, varied
from edgecache.core.ring import Member
from edgecache.errors import OriginError, StorageError, VersionChanged
from edgecache.proxy import observe
from edgecache.proxy.fill import Fill, FillHead, FillRegistry, Released
from edgecache.proxy.origin import OriginClient, OriginResponse, read_chunks
from edgecache.storage.ghosts import Ghosts
from edgecache.storage.store import Store, slice_name

log = logging.getLogger(__name__)
_FROM_MEMORY = metrics.BYTES_SERVED.labels("memory")
_FROM_DISK = metrics.BYTES_SERVED.labels("disk")
_FROM_ORIGIN = metrics.BYTES_SERVED.labels("origin")
_FROM_PEER = metrics.BYTES_SERVED.labels("peer")


# Names of copies and of unversioned objects: unique across workers and restarts by a random prefix per process
# (drawn again in a forked worker), then a counter. secrets.token_hex per fill was a getrandom() system call on
# every miss.
_unique_prefix = ""
_unique_counter = itertools.count()


def _new_prefix() -> None:
    global _unique_prefix, _unique_counter
    _unique_prefix, _unique_counter = os.urandom(8).hex(), itertools.count()


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def _unique() -> str:
    return f"{_unique_prefix}{next(_unique_counter):x}"


# A worker holding slices' leases has this long to store them before the others fetch them themselves.
LEASE_SECONDS = 10.0


class RangeMismatch(OriginError):
    """The origin's 206 is not for the range we asked: it cannot fill slices, but may still answer the client."""


NO_KEY = CacheKey("", "", "/", "")


@dataclass(frozen=True, slots=True)
class FillRequest:
    """Who asks, for what: enough to build the origin request of a fill."""

    site: Site
    entry_key: str
    target: str
    host: str
    headers: Headers  # the client's request fields
    client_ip: str
    policy: Policy
    primary: str = ""
    generation: str = ""  # of the primary record the entry key was made with
    scope: str = ""  # generations of the purged site and directories above the object
    host_key: str = ""  # the normalised host of the cache key
    path: str = ""  # the normalised path of the cache key
    key: CacheKey = NO_KEY  # what a fill asks the origin for (core.forward.fill_request)
    vary: tuple[str, ...] = ()  # the Vary of the record the entry key was made with: the fields a fill sends
    look_aside: bool = False  # the owner asks this node's cache (core.lookaside): answered from it, never filled
    # A hot object on a node that does not own it (core.popularity): filled from its owner, kept in memory only.
    spread_from: Member | None = None


class Engine:
    def __init__(self, store: Store, origin: OriginClient, slice_size: int, fill_slices: int) -> None:
        self.store = store
        self.origin = origin
        self.slice_size = slice_size
        self.fill_slices = fill_slices
        self.fills = FillRegistry()
        self._tasks: set[asyncio.Task[None]] = set()  # fills: cancelled at close
        self._writes: set[asyncio.Task[None]] = set()  # disk writes of complete slices: finished at close
        self.ghosts = Ghosts()  # slices the memory tier evicted: a miss on one is "evicted", not "cold"
        store.memory.on_evict = self.ghosts.add
        self.cluster: ClusterView | None = None  # set in a cluster: a miss here asks the previous owner first

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task[None]] | None = None
    ) -> asyncio.Task[None]:
        group = self._tasks if tasks is None else tasks
        task = asyncio.ensure_future(coro)
        group.add(task)
        task.add_done_callback(group.discard)
        return task

    async def flush(self) -> None:
        """Until every slice received so far is written to the disk tier."""
        while self._writes:
            await asyncio.wait(list(self._writes))

    async def close(self) -> None:
        # A slice already received is worth keeping: let its disk write finish (bounded), then stop the fills.
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=10)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- starting fills ------------------------------------------------------------------------------------

    def start_fill(
        self, req: FillRequest, first: int, last: int | None, validate: ObjectMeta | None = None, shared: bool = True
    ) -> Fill:
        """One origin request for slices first..last (last None: the whole object, no Range sent)."""
        fill = Fill(req.entry_key, first, last, self.slice_size)
        metrics.FILLS.inc()
        if shared:
            self.fills.add(fill)
        self._spawn(self._run_fill(fill, req, validate))
        return fill

    async def _run_fill(self, fill: Fill, req: FillRequest, validate: ObjectMeta | None) -> None:
        try:
            await self._fill(fill, req, validate)
        except asyncio.CancelledError:
            fill.fail(OriginError("fill cancelled"))
            raise
        except OriginError as exc:
            fill.fail(exc)
        except Exception as exc:  # a bug must fail the readers, never leave them waiting
            log.exception("fill of %s failed", req.entry_key)
            fill.fail(OriginError(f"internal error: {exc}"))
        finally:
            self.fills.remove(fill)

    async def _fill(self, fill: Fill, req: FillRequest, validate: ObjectMeta | None) -> None:
        asked: ranges.ByteRange | None = None
        span: tuple[int, int] | None = None
        if fill.last_index is not None:
            asked = ranges.ByteRange(fill.first_index * self.slice_size, (fill.last_index + 1) * self.slice_size - 1)
            span = (asked.first, asked.last)
        checked = Validator(validate.etag, validate.last_modified) if validate is not None else None
        unkeyed = unkeyed_fields(req.site.forward_fields, req.headers, req.vary)
        sent = fill_request(req.key, varied(req.vary, req.headers), req.site.origin_host, span, checked, unkeyed)
        # From here on the request's fields are the ones sent: the answer is stored under their variant.
        req = replace(req, headers=sent.headers)
        request_time = time.time()
        if req.spread_from is not None:
            resp = await self._from_owner(req, sent, req.spread_from)
        else:
            resp = await self._look_aside(req, sent, asked) if validate is None else None
        if resp is None:
            request_time = time.time()
            resp = await self.origin.request(req.site, sent.method, sent.target, sent.headers)
        try:
            primary = req.primary or req.entry_key.split("\n", 1)[0]
            if resp.status == 304:
                existing = validate  # a 304 need not repeat Vary: it is about the entry we asked to validate
            else:
                record = PrimaryRecord(req.generation, entry.vary_names(resp.headers))
                existing = await self.store.get_meta(entry_key(primary, record, req.headers, req.scope))
            # _head() tells a fill an invalidation overtook by the record this process holds: one let go
            # meanwhile (the RSS bound, another worker's purge) is read back from disk first, never taken as none.
            await self.store.get_record(primary)
            head = self._head(resp.status, resp.headers, asked, req, (request_time, time.time()), existing)
            if resp.peer is not None:
                head = replace(head, peer=resp.peer)
            if fill.last_index is not None and not self._within_run(fill, head):
                fill.first_index, fill.last_index = 0, None  # the origin sent more than the run: the whole object
            self.fills.remove(fill)
            # The response's own Vary decides where it is stored; those with other header values must not join.
            fill.entry_key = head.entry_key
            if head.shared:
                self.fills.add(fill)
            req = replace(req, entry_key=head.entry_key)
            primary = req.primary or req.entry_key.split("\n", 1)[0]
            keep = head.status == 304 or (head.store and head.meta.length >= 0)
            known = self.store.peek_record(primary)
            record = replace(known or PrimaryRecord(req.generation), vary=head.meta.vary)
            if keep:  # visible before anyone hears of the head, so the next request is a hit
                self.store.remember_record(primary, record)
                self.store.remember_meta(req.entry_key, head.meta)
            fill.set_head(head)
            if keep and req.spread_from is None:  # a spread copy is kept in memory only
                if record != known:  # the next slice of a stored object brings the same record
                    await self.store.put_record(primary, record)
                await self.store.put_meta(req.entry_key, head.meta, lazy=True)
            if head.status == 304:
                return
            if not head.shared and not fill.streamed:
                # Nobody may share this body and nobody will stream it (a background revalidation, a slice reader):
                # taking it in would only wait, at the fill's bound, for a reader that never comes.
                raise OriginError("the answer cannot be stored and nobody streams it", retryable=False)
            await self._pump(fill, head, resp, req)
        finally:
            resp.release()

    async def _look_aside(
        self, req: FillRequest, sent: OriginRequest, asked: ranges.ByteRange | None
    ) -> OriginResponse | None:
        """The previous owner's answer from its cache when this node owns the object (core.lookaside), in place
        of the origin's; None when there is nobody to ask or its answer may not be stored here: then the origin
        is asked at once. The request is the fill's, sent to the key's host with a signed look-aside hop; the
        answer is taken only for the version of the slices already stored here, without what the peer added."""
        view = self.cluster
        peer = view.previous_owner(req.primary) if view is not None and req.primary and req.key.host else None
        if view is None or peer is None:
            return None
        site, headers = self._to_peer(view, req, sent, peer, look_aside=True)
        held = await self.store.get_meta(req.entry_key)
        try:
            async with asyncio.timeout(view.settings.timeout):
                resp = await self.origin.to_peer(peer.id).request(site, sent.method, sent.target, headers)
        except (OriginError, TimeoutError) as exc:
            error = exc if isinstance(exc, OriginError) else OriginError("look-aside timed out", timeout=True)
            observe.peer_error(peer.id, error)
            metrics.PEER_LOOKASIDE.labels(peer.id, lookaside.Outcome.ERROR).inc()
            return None
        outcome = lookaside.judge(resp.status, resp.headers, asked, held.version if held is not None else None)
        metrics.PEER_LOOKASIDE.labels(peer.id, outcome).inc()
        if outcome is not lookaside.Outcome.HIT:
            resp.close()  # its body is not read: the connection is not reused
            return None
        resp.headers = lookaside.origin_fields(resp.headers)
        return resp

    async def _from_owner(self, req: FillRequest, sent: OriginRequest, owner: Member) -> OriginResponse | None:
        """The owner's answer to the fill of a spread copy (core.popularity), taken as the origin's would be; None
        when the owner could not be asked (then the origin is, as the next owner would): its failures are the
        peer's, counted as such, and one that could not connect takes it down at once."""
        assert self.cluster is not None
        site, headers = self._to_peer(self.cluster, req, sent, owner, look_aside=False)
        try:
            resp = await self.origin.to_peer(owner.id).request(site, sent.method, sent.target, headers)
        except OriginError as exc:
            observe.peer_error(owner.id, exc)
            if exc.connect:
                self.cluster.failed(owner.id)
            return None
        resp.headers = lookaside.origin_fields(resp.headers)
        return resp

    @staticmethod
    def _to_peer(
        view: ClusterView, req: FillRequest, sent: OriginRequest, peer: Member, look_aside: bool
    ) -> tuple[Site, Headers]:
        """Where and with which fields a fill's request goes to a peer: the key's host, and a signed hop."""
        field = view.hop_field(sent.method, req.primary, "fill", "-", False, look_aside=look_aside)
        site = replace(req.site, origins=(f"http://{peer.address}",), origin_host=None)
        headers = (("Host", req.key.host), *((k, v) for k, v in sent.headers if k.lower() != "host"), (HOP, field))
        return site, headers

    def _within_run(self, fill: Fill, head: FillHead) -> bool:
        """Whether the body is within the run of slices the fill asked for (a 200 of unknown length never is)."""
        assert fill.last_index is not None
        first, end = fill.first_index * self.slice_size, (fill.last_index + 1) * self.slice_size
        return head.start >= first and head.end is not None and head.end <= end

    def _head(
        self,
        status: int,
        headers: Headers,
        asked: ranges.ByteRange | None,
        req: FillRequest,
        times: tuple[float, float],
        existing: ObjectMeta | None,
    ) -> FillHead:
        """Judge the origin's response head; `existing` is what is stored under the key it belongs to."""
        request_time, response_time = times
        j = entry.judge(status, headers, asked)
        served = entry.stored_headers(headers, status)  # what the client that asked gets
        stored = strip_for_storage(served, req.policy)  # what anyone else may ever get
        if get_first(stored, "date") is None:  # RFC 9110 6.6.1: a recipient with a clock adds the Date it lacks
            stored += (("Date", formatdate(response_time, usegmt=True)),)
        if isinstance(j, entry.Refused):
            if status == 206:
                raise RangeMismatch(f"origin response refused: {j.reason}", retryable=False)
            raise OriginError(f"origin response refused: {j.reason}", retryable=False)
        vary = entry.vary_names(headers) if status != 304 else (existing.vary if existing else ())
        primary = req.primary or req.entry_key.split("\n", 1)[0]
        key = entry_key(primary, PrimaryRecord(req.generation, vary), req.headers, req.scope)
        current = self.store.peek_record(primary)
        # A fill that started before an invalidation or purge must not store what it brings.
        alive = current is None or current.generation == req.generation
        # Concurrent cold fills of one object: the first head to arrive names the copy, the others join it.
        existing = self.store.peek_meta(key) or existing
        if isinstance(j, entry.NotModified):
            if existing is None:
                raise OriginError("origin answered 304 to an unconditional request", retryable=False)
            # RFC 9111 4.3.4: the stored response is updated with the 304's fields and becomes fresh again.
            merged = replace(
                existing,
                headers=merge_304(existing.headers, stored),
                request_time=request_time,
                response_time=response_time,
            )
            return FillHead(304, merged, 0, 0, store=False, shared=True, entry_key=req.entry_key)
        end: int | None
        if isinstance(j, entry.Partial):
            length, start, end, body_status = j.length, j.first, j.last + 1, 200
        else:
            length = j.length if j.length is not None else -1
            start, end, body_status = 0, j.length, status
        version = entry.version_of(headers, length if length >= 0 else None)
        # A 200 to a Range request says the origin ignores Range: fill such objects in one request from now on.
        whole = version is None or isinstance(j, entry.Other) or (isinstance(j, entry.Whole) and asked is not None)
        if version is None:
            version = "u:" + _unique()
        if existing is not None and existing.version == version and existing.status == body_status:
            whole, token = whole or existing.whole, existing.token  # more of the same copy
        else:
            token = _unique()
        meta = ObjectMeta(
            status=body_status,
            headers=entry.shared_fields(stored),
            length=length,
            version=version,
            whole=whole,
            request_time=request_time,
            response_time=response_time,
            slice_size=self.slice_size,
            vary=vary,
            token=token,
        )
        decision = storable("GET", body_status, req.headers, headers, req.policy)
        # Every stored body goes to the store a slice at a time as it arrives, whatever its status and whether its
        # length is known; the metadata of one of unknown length follows once it has ended whole (_pump). An
        # answer that is not stored, one an invalidation overtook included, is not shared either: its one reader
        # paces it.
        store = decision.store and alive
        if not decision.store:
            meta = replace(meta, headers=served)  # never stored: its own client gets every field
        return FillHead(
            body_status,
            meta,
            start,
            end,
            store,
            store,
            decision.reason,
            key,
            variant(vary, req.headers),
            served,
        )

    async def _pump(self, fill: Fill, head: FillHead, resp: object, req: FillRequest) -> None:
        from edgecache.proxy.origin import OriginResponse

        assert isinstance(resp, OriginResponse)
        version = head.meta.slice_version
        stored: list[int] = []
        writes: list[asyncio.Task[None]] = []  # this fill's disk writes: what dropping its slices waits for

        def on_complete(index: int, data: bytes) -> None:
            if head.store:
                stored.append(index)
                self.store.put_slice_memory(req.entry_key, version, index, data)
                if req.spread_from is not None:  # a spread copy: in memory only, never written to disk
                    fill.mark_durable(index)
                    return
                writes.append(self._spawn(self._write_slice(fill, req.entry_key, version, index, data), self._writes))

        if head.store:
            fill.from_store = functools.partial(self._stored_slice, req.entry_key, head.meta)
        size = self.slice_size
        try:
            async for chunk in read_chunks(resp):
                if head.end is not None and fill.received + len(chunk) > head.end:
                    raise OriginError("origin sent more bytes than it announced", retryable=False)
                for lo in range(0, len(chunk), size):  # a slice's worth at a time, each once the fill has room
                    await fill.room()
                    fill.feed(chunk if len(chunk) <= size else memoryview(chunk)[lo : lo + size], on_complete)
            if head.end is not None and fill.received != head.end:
                raise OriginError(f"origin body cut at {fill.received} of {head.end} bytes")
        except OriginError:
            if head.meta.length < 0 and stored:  # a cut body of unknown length: its slices name no object
                self._spawn(self._forget(req.entry_key, version, stored, writes), self._writes)
            raise
        fill.finish(on_complete)
        if head.store and head.meta.length < 0:
            await self._store_length(req, head.meta, fill.received, stored, writes)

    async def _write_slice(self, fill: Fill, entry_key: str, version: str, index: int, data: bytes) -> None:
        # A failed write lets the fill drop its copy all the same: its bound holds whatever the disk does, and a
        # reader that still needs the slice fetches it again.
        await self.store.put_slice_disk(entry_key, version, index, data)
        fill.mark_durable(index)

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

        Visible to this process before the first await, so a client that read the body to its end and asks
        again is answered from the cache."""
        meta = replace(meta, length=length)
        primary = req.primary or req.entry_key.split("\n", 1)[0]
        current = self.store.peek_record(primary)
        if current is not None and current.generation != req.generation:
            await self._forget(req.entry_key, meta.slice_version, stored, writes)  # invalidated meanwhile
            return
        record = replace(current or PrimaryRecord(req.generation), vary=meta.vary)
        self.store.remember_record(primary, record)
        self.store.remember_meta(req.entry_key, meta)
        if req.spread_from is None:  # a spread copy is kept in memory only
            await self.store.put_record(primary, record)
            await self.store.put_meta(req.entry_key, meta)

    async def _forget(self, entry_key: str, version: str, indices: list[int], writes: list[asyncio.Task[None]]) -> None:
        """Drop slices of a body that will never be stored, once its own disk writes (already started) are done.

        Only its own: waiting for every write in flight made two fills cut in the same turn wait for each other.
        """
        if (stored := self.store.peek_meta(entry_key)) is not None and stored.slice_version == version:
            return  # more of a copy already stored (same strong ETag): its slices are its own
        if writes:
            await asyncio.wait(writes)
        for index in indices:
            name = slice_name(entry_key, version, index)
            self.store.memory.delete(name)
            with contextlib.suppress(StorageError):
                await self.store.disk.delete(name)

    # --- reading ---------------------------------------------------------------------------------------------

    def memory_range(self, req: FillRequest, meta: ObjectMeta, first: int, last: int) -> bytes | None:
        """Bytes first..last if every slice holding them is in the memory tier, else None (no I/O, no waiting)."""
        parts = []
        for index in ranges.slice_indices(ranges.ByteRange(first, last), self.slice_size):
            data = self.store.slice_from_memory(req.entry_key, meta, index)
            if data is None:
                return None
            base = index * self.slice_size
            parts.append(memoryview(data)[max(first, base) - base : min(last + 1, base + len(data)) - base])
        body = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
        _FROM_MEMORY.inc(len(body))
        return body

    async def read_range(
        self, req: FillRequest, meta: ObjectMeta, first: int, last: int
    ) -> AsyncIterator[bytes | memoryview]:
        """Bytes first..last (inclusive) of the object `meta` describes, from wherever they are."""
        for index in ranges.slice_indices(ranges.ByteRange(first, last), self.slice_size):
            base = index * self.slice_size
            lo = max(first, base) - base
            hi = min(last + 1, base + meta.slice_length(index)) - base
            async for chunk in self._read_slice(req, meta, index, lo, hi, last // self.slice_size):
                yield chunk

    async def _read_slice(
        self, req: FillRequest, meta: ObjectMeta, index: int, lo: int, hi: int, last_needed: int
    ) -> AsyncIterator[bytes | memoryview]:
        released = False
        for _ in range(3):
            data = self.store.slice_from_memory(req.entry_key, meta, index)
            if data is not None:
                _FROM_MEMORY.inc(hi - lo)
                yield memoryview(data)[lo:hi]
                return
            fill = None if released else self.fills.find(req.entry_key, index)
            if fill is None:
                data = await self.store.slice_from_disk(req.entry_key, meta, index)
                if data is not None:
                    _FROM_DISK.inc(hi - lo)
                    yield memoryview(data)[lo:hi]
                    return
                started = await self._start_for(req, meta, index, last_needed, join=not released)
                if started is None:  # another worker process is fetching this slice: read it when it lands
                    metrics.COLLAPSED.inc()
                    await self.store.wait_for_peer(req.entry_key, meta, index, LEASE_SECONDS)
                    continue
                fill = started  # the request's miss is counted once, by its cause, when it ends (observe.finish)
            head = await fill.head
            if head.status == 304 and head.meta.slice_version == meta.slice_version:
                released = True  # a revalidation found while it ran: it brings no body, so read the slice as stored
                continue
            if head.meta.slice_version != meta.slice_version or head.status != meta.status:
                raise VersionChanged(f"origin now has version {head.meta.version}, serving {meta.version}")
            try:
                counter = _FROM_ORIGIN if head.peer is None else _FROM_PEER
                async for chunk in fill.read(index, lo, hi):
                    counter.inc(len(chunk))
                    yield chunk
                    lo += len(chunk)
                return
            except Released:
                released = True  # the fill dropped it as stored, yet the store lost it: fetch it again
                continue
        raise OriginError(f"slice {index} could not be read")

    async def _start_for(
        self, req: FillRequest, meta: ObjectMeta, index: int, last_needed: int, join: bool = True
    ) -> Fill | None:
        """A fill of the run of missing slices from `index` (or the one already fetching it); None when another
        worker process holds the lease on `index`."""
        if meta.whole:
            return self.start_fill(req, 0, None)
        stop = min(index + self.fill_slices - 1, last_needed, meta.slice_count - 1)
        candidates = list(range(index + 1, stop + 1))
        run_end = index
        if candidates:
            missing = set(await self.store.missing(req.entry_key, meta, candidates))
            for i in candidates:
                if i not in missing or self.fills.find(req.entry_key, i) is not None:
                    break
                run_end = i
        again = self.fills.find(req.entry_key, index) if join else None  # someone may have started it meanwhile
        if again is not None:
            return again
        if self.store.shared and req.spread_from is None:  # a spread copy never lands on disk: nothing to lease
            leased = await self.store.lease_run(req.entry_key, meta, list(range(index, run_end + 1)), LEASE_SECONDS)
            if leased == 0:
                return None
            run_end = index + leased - 1
            again = self.fills.find(req.entry_key, index) if join else None
            if again is not None:
                return again
        return self.start_fill(req, index, run_end)
