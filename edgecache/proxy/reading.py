"""Reading an object's bytes wherever they are: the memory tier, the disk tier, or a fill in flight, starting a
fill of the run of missing slices when none has them. Each slice is read from the version being served: a fill
that brings another raises VersionChanged rather than mixing two versions in one answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Container, Sequence
from dataclasses import replace

from edgecache import metrics
from edgecache.core import entry, ranges
from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import keyed_fields
from edgecache.errors import OriginError, PeerCut, Unread, VersionChanged
from edgecache.proxy.engine import Engine
from edgecache.proxy.fill import Fill, FillHead, Released
from edgecache.proxy.fillhead import RangeMismatch, new_token
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.revalidating import whole_by_another_worker

log = logging.getLogger(__name__)

_FROM_MEMORY = metrics.BYTES_SERVED.labels("memory")
_FROM_DISK = metrics.BYTES_SERVED.labels("disk")
_FROM_ORIGIN = metrics.BYTES_SERVED.labels("origin")
_FROM_PEER = metrics.BYTES_SERVED.labels("peer")
# Looks at a slice, each after a fetch of it the reader met ended without storing it: then errors.Unread.
READ_TRIES = 3


def memory_range(engine: Engine, req: FillRequest, meta: ObjectMeta, first: int, last: int) -> bytes | None:
    """Bytes first..last if every slice holding them is in the memory tier, else None (no I/O, no waiting)."""
    parts = []
    for index in ranges.slice_indices(ranges.ByteRange(first, last), engine.slice_size):
        data = engine.store.slice_from_memory(req.entry_key, meta, index)
        if data is None:
            return None
        base = index * engine.slice_size
        parts.append(memoryview(data)[max(first, base) - base : min(last + 1, base + len(data)) - base])
    body = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
    _FROM_MEMORY.inc(len(body))
    return body


async def read_range(
    engine: Engine, req: FillRequest, meta: ObjectMeta, first: int, last: int, own: Fill | None = None
) -> AsyncIterator[bytes | memoryview]:
    """Bytes first..last (inclusive) of the object `meta` describes, from wherever they are (`own`: the fill of
    the miss they answer, as read_slice takes it)."""
    size = engine.slice_size
    for index in ranges.slice_indices(ranges.ByteRange(first, last), size):
        base = index * size
        lo = max(first, base) - base
        hi = min(last + 1, base + meta.slice_length(index)) - base
        async for chunk in read_slice(engine, req, meta, index, lo, hi, last // size, own):
            yield chunk


async def read_slice(
    engine: Engine,
    req: FillRequest,
    meta: ObjectMeta,
    index: int,
    lo: int,
    hi: int,
    last_needed: int,
    own: Fill | None = None,
    looked: bool = False,
) -> AsyncGenerator[bytes | memoryview, None]:
    """Bytes lo..hi-1 of slice `index`; a fill started for it runs to `last_needed` at most. `own`: the fill a
    miss started (coldmiss), read first even once it has left the table of fills, and whose bytes are counted as
    the origin's wherever it has put them by now (diskhit.counters). `looked`: the caller found it on no disk
    just now, so the first look there is skipped (a trip to a disk thread per slice; memory and fills are still
    looked at, and _start_for looks at memory again after its own awaits)."""
    released = False
    from_memory, from_disk = _FROM_MEMORY, _FROM_DISK
    if own is not None and own.covers(index):  # this miss's bytes, wherever its fill has put them by now
        from_memory = from_disk = _FROM_PEER if _from_peer(own) else _FROM_ORIGIN
    copies = [(req.entry_key, meta)]  # whose stored slices are this slice's bytes, and the key each is under
    for _ in range(READ_TRIES):
        data = _in_memory(engine, copies, index)
        if data is not None:
            from_memory.inc(hi - lo)
            yield memoryview(data)[lo:hi]
            return
        fill = None if released else engine.fills.find(req, index)
        if not released and own is not None and own.covers(index):
            fill = own  # failed, it fails this read: the miss ends as the full handler's would
        if fill is None:
            data = None if looked else await _on_disk(engine, copies, index)
            looked = False
            if data is not None:
                from_disk.inc(hi - lo)
                yield memoryview(data)[lo:hi]
                return
            started = await _start_for(engine, req, meta, index, last_needed, join=not released)
            if isinstance(started, _Held):  # a fill stored it while this looked: read it as stored
                continue
            if started is None:  # another worker process is fetching this slice: read it when it lands
                metrics.collapsed(metrics.SOURCES.get())
                await engine.store.wait_for_peer(req.entry_key, meta, index, None)  # while its fill renews the lease
                continue
            fill = started  # the request's miss is counted once, by its cause, when it ends (observe.finish)
        _joined(fill, own)
        try:
            async for chunk in _read_fill(fill, req, fill is own, meta, index, lo, hi):
                yield chunk
                lo += len(chunk)
            return
        except Released:
            released = True  # read the slice as stored, or fetch it again if the store lost it
            copies.append((_key_of(fill, req), fill.head.result().meta))  # the same bytes (_from_fill)
        except (RangeMismatch, VersionChanged) as exc:
            if await _disagreed(engine, req, meta, fill, exc):
                raise VersionChanged(f"the origin's slices of {meta.version} disagree: fetched whole now") from exc
            raise
    raise Unread(f"slice {index} unread in {READ_TRIES} tries: each fetch of it met ended without storing it")


async def _read_fill(
    fill: Fill, req: FillRequest, own: bool, meta: ObjectMeta, index: int, lo: int, hi: int
) -> AsyncIterator[bytes | memoryview]:
    """_from_fill, but Released at once from an ended fill of another variant than the reader's (_ended_elsewhere);
    not from `own`, a miss's own fill, which is its answer."""
    if not own and _ended_elsewhere(fill, req):
        raise Released
    async for chunk in _from_fill(fill, meta, index, lo, hi):
        yield chunk


def _joined(fill: Fill, own: Fill | None) -> None:
    """Count the request in edgecache_collapsed_waits_total (once a request: metrics.collapsed) when the fill it reads
    a slice from is another request's origin fetch: not its miss's own, nor one a read of its own started."""
    request = metrics.SOURCES.get()
    if fill is not own and fill.opener is not request:
        metrics.collapsed(request)


def _ended_elsewhere(fill: Fill, req: FillRequest) -> bool:
    """Has `fill` ended with a head of another variant than the reader's (its Vary named other fields than the
    reader's key)? What it still holds then is a slice memory alone had (Fill.mark_durable in_memory), kept for
    readers of its own copy: this one reads the slice as a released one, under its own key (_key_of), never another
    variant's bytes. Read from such an ended fill, a gzip request got another variant's 100 bytes once in the e2e
    fuzz (mode excl), where before it was Released and looked under its own key."""
    head = fill.head
    if not (fill.done and head.done()) or head.cancelled() or head.exception() is not None:
        return False
    return keyed_fields(fill.entry_key) != keyed_fields(req.entry_key)


def _in_memory(engine: Engine, copies: list[tuple[str, ObjectMeta]], index: int) -> bytes | None:
    """The slice from memory, of the first copy there that has it. A released fill's copy is looked for under the
    fill's key, which need not be the request's: one with a purge scope the request's key lacked was looked for
    under the request's, not found, fetched again, three times, and the answer was a 502 "slice N could not be
    read" (tests/e2e/test_released_copy.py)."""
    for key, meta in copies:
        data = engine.store.slice_from_memory(key, meta, index)
        if data is not None:
            return data
    return None


def _key_of(fill: Fill, req: FillRequest) -> str:
    """Where a released fill stored its copy that a reader may look: under the fill's key when it names the
    reader's variant (its purge scope or generation may differ), else under the reader's own. Another variant's
    bytes are never read for it, even where the origin gives every variant one strong ETag (a lie, RFC 9110
    8.8.3, that entry.same_bytes takes at its word)."""
    return fill.entry_key if keyed_fields(fill.entry_key) == keyed_fields(req.entry_key) else req.entry_key


async def _on_disk(engine: Engine, copies: list[tuple[str, ObjectMeta]], index: int) -> bytes | None:
    """The slice from the disk, of the first copy there that has it (with exclusive tiers, what memory evicted of a
    released fill's copy is there once written back). One look for the reader's own copy before any release."""
    looked: set[tuple[str, str]] = set()
    for key, meta in copies:
        if (key, meta.slice_version) in looked:
            continue
        looked.add((key, meta.slice_version))
        data = await engine.store.slice_from_disk(key, meta, index)
        if data is not None:
            return data
    return None


async def _disagreed(engine: Engine, req: FillRequest, meta: ObjectMeta, fill: Fill, exc: OriginError) -> bool:
    """Whether the fill of a slice the stored copy `meta` lacks met an origin whose answers to one object's ranges
    disagree: a range it answered with another (shifted, or of unknown length: RangeMismatch), or the same ETag
    weak in one answer and strong in another. Such a copy is never completed by ranges: it is replaced by an empty
    one of the same version (a new token: nothing of the old is read for it) that is fetched whole from now on, so
    that the next answer is whole and exact, not cut at the same slice for good. A real new version is no such
    thing: the fill has stored it, and the next request reads it (VersionChanged is raised when another copy was
    stored while this one's slice was fetched: the request starts again with it)."""
    if meta.whole:
        return False
    head = fill.head
    brought = head.result() if head.done() and not head.cancelled() and head.exception() is None else None
    twins = brought is not None and entry.weak_twins(meta.headers, brought.meta.headers)
    if isinstance(exc, PeerCut) or (isinstance(exc, VersionChanged) and not twins):
        return False  # a peer's answer that broke off says nothing of how the origin answers ranges
    current = await engine.store.get_meta(req.entry_key)
    ours = {meta.slice_version} | ({brought.meta.slice_version} if brought is not None else set())
    if current is None or current.slice_version not in ours:
        # Another copy was stored meanwhile, or this one dropped (a request met the new version first): the request
        # starts again with what is stored now. A 416 (or a shifted 206) to this copy's range is what the origin
        # says of a new copy, no failure of the origin's: raised as it came, it answered 502 (a fill of slice 1 of
        # a copy while a revalidation stored the shrunken one); and a dropped copy taken for one whose origin
        # disagrees was stored again, to be fetched whole (tests/e2e/test_dropped_copy.py).
        raise VersionChanged(f"{meta.slice_version} was replaced while its slice was fetched ({exc})") from exc
    log.warning("%s: the origin's answers to its ranges disagree (%s): fetched whole from now on", req.entry_key, exc)
    whole = replace(meta, whole=True, token=new_token())
    engine.store.remember_meta(req.entry_key, whole)
    await engine.store.put_meta(req.entry_key, whole)
    return True


def brings(head: FillHead, meta: ObjectMeta) -> bool:
    """Does a fill whose head is `head` bring the bytes of the copy `meta`: the same copy, or another of the same
    bytes (entry.same_bytes: one strong ETag), answered with the same status? Then its slices serve that copy's
    readers: a fill's slices all come of one origin answer, one version."""
    return head.status == meta.status and entry.same_bytes(meta, head.meta)


async def _from_fill(fill: Fill, meta: ObjectMeta, index: int, lo: int, hi: int) -> AsyncIterator[bytes | memoryview]:
    """Bytes lo..hi-1 of slice `index` as `fill` brings them, when they are the bytes of the copy `meta` (the same
    copy, or one of the same strong ETag: entry.same_bytes). Released: it brings none of them (a revalidation
    found while it ran has no body; or the fill dropped the slice as stored)."""
    head = await fill.heard()
    if (request := metrics.SOURCES.get()) is not None:
        request.asked(fill.addr)
    if head.status == 304 and entry.same_bytes(meta, head.meta):
        raise Released
    if not brings(head, meta):
        got, served = f"{head.meta.slice_version} ({head.status})", f"{meta.slice_version} ({meta.status})"
        raise VersionChanged(f"origin now has copy {got}, serving {served}")
    counter = _FROM_ORIGIN if head.peer is None else _FROM_PEER
    async for chunk in fill.read(index, lo, hi):
        counter.inc(len(chunk))
        yield chunk


class _Held:
    """_start_for(): the slice is stored now, by a fill that started and ended while the reader looked for it."""


HELD = _Held()


async def _start_for(
    engine: Engine, req: FillRequest, meta: ObjectMeta, index: int, last_needed: int, join: bool = True
) -> Fill | _Held | None:
    """A fill of the run of missing slices from `index` (or the one already fetching it); None when another
    worker process holds the lease on `index`; HELD when the slice is stored now (by another worker's fill of a
    copy stored only whole, which this waited for: whole_by_another_worker)."""
    if meta.whole:
        if join and await whole_by_another_worker(engine.store, req, meta, index):
            return HELD  # read it on the disk
        return _opened(engine, req, 0, None)
    stop = min(index + engine.fill_slices - 1, last_needed, meta.slice_count - 1)
    candidates = list(range(index + 1, stop + 1))
    run_end = index
    if candidates:
        # A fill that ended during the look at the disk is in no table of fills, and the look found its slice
        # missing: it is in memory now, or on its way to disk (_unheld looks there too).
        missing = set(await engine.store.missing(req.entry_key, meta, candidates))
        run_end += _unheld(engine, req, meta, candidates, missing)
    # The reader's look at memory and disk was before its awaits: a fill that ran to its end meanwhile is in no
    # table of fills, and its slice is in memory or on its way to disk (two concurrent readers fetched it twice).
    # What the disk says it holds is not trusted here: only a read proves it (a disk may have gone).
    if engine.store.in_memory(req.entry_key, meta, index):
        return HELD
    again = engine.fills.find(req, index) if join else None  # someone may have started it meanwhile
    if again is not None:
        return again
    if engine.store.shared and req.spread_from is None:  # a spread copy never lands on disk: nothing to lease
        leased = await engine.store.lease_run(
            req.entry_key, meta, list(range(index, run_end + 1)), engine.store.lease_seconds
        )
        if leased == 0:
            return None
        # This worker takes again the leases it holds (storage.disk.lease): a fill of its own that ended during the
        # await has left the table of fills, its slices in memory and on their way to disk.
        taken = range(index, index + leased)
        if engine.store.in_memory(req.entry_key, meta, index):
            await _let_go_spare(engine, req, meta, taken)
            return HELD
        run = taken[: 1 + _unheld(engine, req, meta, taken[1:])]  # (missing on disk: each was leased)
        again = engine.fills.find(req, index) if join else None
        fill = again if again is not None else _opened(engine, req, index, run[-1])
        # Leases name no owner: the fill lets go of those whose slices it does not store (Engine._run_fill).
        fill.leases.update(engine.store.lease_names(req.entry_key, meta.slice_version, run))
        await _let_go_spare(engine, req, meta, taken[len(run) :])
        return fill
    return _opened(engine, req, index, run_end)


def _unheld(
    engine: Engine, req: FillRequest, meta: ObjectMeta, indices: Sequence[int], missing: Container[int] | None = None
) -> int:
    """How many of `indices`, from the first, neither memory holds nor a fill of this worker brings (nor the disk,
    where `missing` is given: those it lacks)."""
    for n, i in enumerate(indices):
        on_disk = missing is not None and i not in missing
        if on_disk or engine.store.in_memory(req.entry_key, meta, i) or engine.fills.find(req, i) is not None:
            return n
    return len(indices)


async def _let_go_spare(engine: Engine, req: FillRequest, meta: ObjectMeta, indices: range) -> None:
    """Let go of the leases just taken on `indices` that no fill of this worker holds: held, they kept the other
    workers waiting the lease's time for slices nobody fetches (or that the disk refused). A slice still on its way
    to disk may be fetched by another worker meanwhile: a fetch too many, never a wait."""
    names = engine.store.lease_names(req.entry_key, meta.slice_version, indices)
    if spare := [name for i, name in names.items() if engine.fills.find(req, i) is None]:
        await engine.store.drop_leases(spare)


def _opened(engine: Engine, req: FillRequest, first: int, last: int | None) -> Fill:
    """A fill started for the request being answered (its metrics.Sources), which its later slices read as its own."""
    fill = engine.start_fill(req, first, last)
    fill.opener = metrics.SOURCES.get()
    return fill


def _from_peer(fill: Fill) -> bool:
    head = fill.head
    return head.done() and not head.cancelled() and head.exception() is None and head.result().peer is not None
