"""Answers from the cache: a stored entry (all of it held, or some slices fetched on the way), or a fill's body
as it arrives. The handler has decided which; this module picks the fill a miss reads, sets the Cache-Status,
and sends the answer, passing through what the cache should not answer (a costly multipart Range)."""

from __future__ import annotations

import contextlib
import time
from typing import Literal

from aiohttp import web

from edgecache.core import admit, entry, lookaside, ranges
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.entry import ObjectMeta
from edgecache.core.fillcost import (
    FillPlan,
    cold_run,
    may_take_too_many,
    needed_slices,
    plan_fill,
    stored_run,
    too_many_fills,
)
from edgecache.core.freshness import Use, current_age
from edgecache.core.headers import Headers, get_first
from edgecache.core.ring import Member
from edgecache.core.status import CacheStatus, cache_status_header, with_fetched
from edgecache.errors import ClientError, VersionChanged
from edgecache.proxy import observe, reading, respond
from edgecache.proxy.engine import Engine
from edgecache.proxy.expecting import Expected
from edgecache.proxy.fill import Fill, FillHead, answered_from, fill_detail, unstored
from edgecache.proxy.fillhead import RangeMismatch
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.passthrough import pass_through
from edgecache.proxy.respond import answer_slices, base_headers, plan, probed_slices, send, send_small, send_stream
from edgecache.proxy.revalidating import being_written
from edgecache.storage.store import slice_name

CACHED_METHODS = frozenset({"GET", "HEAD"})


async def past_the_end(request: web.BaseRequest, req: FillRequest, exc: RangeMismatch) -> web.StreamResponse | None:
    """The 416 a miss gets when its fill's 416 told a length its Range is past the end of
    (RangeMismatch.unsatisfiable_for); None: pass it through."""
    length = exc.unsatisfiable_for(request.method, req.headers)
    if length is None:
        return None
    observe.mark(request, CacheStatus.MISS)
    return await send_small(request, respond.past_the_end(request.method, exc.fields, length))


def first_index(engine: Engine, request: web.BaseRequest, meta: ObjectMeta | None) -> tuple[int, int | None]:
    """Which slices a fill for this request starts with; last None: fetch the whole object at once."""
    header = request.headers.get("Range")
    if meta is not None:
        return stored_run(header, meta.whole, meta.length, engine.slice_size)
    return cold_run(request.method, header, engine.slice_size, engine.fill_slices)


def fill_for(engine: Engine, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta | None) -> tuple[Fill, bool]:
    """The fill this request reads (joined, or started), and whether it started it."""
    first, last = first_index(engine, request, meta)
    return engine.fill_for(req, first, last, meta)


async def _multipart_passes(engine: Engine, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta) -> bool:
    """Whether the client's multipart Range is one to pass through (multipart_passes)."""
    if request.method == "HEAD" or "," not in (get_first(req.headers, "range") or ""):
        return False  # no body, or not a multipart Range: no need to plan the answer twice
    _, rng = plan(request.method, req.headers, meta)
    return isinstance(rng, ranges.Multi) and await multipart_passes(engine, req, meta, rng)


async def multipart_passes(engine: Engine, req: FillRequest, meta: ObjectMeta, rng: ranges.Multi) -> bool:
    """Whether a multipart Range would make the origin send far more than it is served, or its missing slices take
    more fills than are read before its head (the rules are core.fillcost's: plan_fill, too_many_fills): such a
    request is passed through, its own Range to the origin, nothing stored."""
    size, parts, whole = engine.slice_size, rng.ranges, meta.whole
    filled = plan_fill(parts, size, whole=whole) is FillPlan.FILL
    if filled and not may_take_too_many(parts, size, whole=whole):
        return False  # within both bounds even with nothing stored: no need to look
    # plan_fill's PASS with nothing stored comes of small parts only: their list is short (needed_slices)
    needed = needed_slices(parts, size) if not filled else answer_slices("GET", req.headers, meta, size)
    missing = set(await engine.store.missing(req.entry_key, meta, needed))
    if too_many_fills(parts, size, missing, engine.fill_slices, whole=whole):
        return True
    cached = [i for i in needed if i not in missing or engine.fills.find(req, i) is not None]
    return not filled and plan_fill(parts, size, cached, whole=whole) is FillPlan.PASS


async def serve_stored(
    engine: Engine,
    request: web.BaseRequest,
    req: FillRequest,
    meta: ObjectMeta,
    use: Use,
    validated: CacheStatus | None,
) -> web.StreamResponse | None:
    """The answer from a stored entry, if `use` (or a revalidation that just confirmed it: `validated`, the status
    it answers with, core.status.of_304) allows one."""
    if validated is not None:
        return await serve(engine, request, req, meta, validated)
    if use is Use.FRESH:
        return await serve(engine, request, req, meta, CacheStatus.HIT)
    if use is Use.STALE_OK:
        return await serve(engine, request, req, meta, CacheStatus.STALE)
    if use is Use.STALE_WHILE_REVALIDATE:
        engine.revalidate_in_background(req, meta)
        return await serve(engine, request, req, meta, CacheStatus.STALE)
    return None


async def serve(
    engine: Engine,
    request: web.BaseRequest,
    req: FillRequest,
    meta: ObjectMeta,
    status: CacheStatus,
    detail: str = "",
) -> web.StreamResponse:
    """The answer from the stored entry `meta`, with `status` (or PARTIAL: _completed). An only-if-cached request
    it cannot answer without the origin (a slice to fetch, a multipart Range to pass) is a 504 (RFC 9111 5.2.1.7)."""
    only_if_cached = parse_cache_control(req.headers).only_if_cached
    if await _multipart_passes(engine, request, req, meta):
        if only_if_cached:
            raise ClientError.of(admit.NOT_CACHED)
        return await pass_through(request, engine.origin, req, CacheStatus.MISS)
    status, probes = await _completed(engine, request, req, meta, status)
    if req.look_aside and not lookaside.may_answer(True, True, status is CacheStatus.PARTIAL):
        raise ClientError(504, lookaside.NOT_HELD)
    if only_if_cached and status is CacheStatus.PARTIAL:
        raise ClientError.of(admit.NOT_CACHED)
    if probes:
        await first_fetched(engine, req, meta, probes)
    observe.mark(request, status)
    age = current_age(meta.headers, meta.request_time, meta.response_time, time.time())
    headers = base_headers(meta.headers, int(age), cache_status_header(status, detail=detail, found=req.found))
    with engine.reading(req.entry_key):  # a fill of the whole object it starts runs while it is read
        return await send(
            request,
            req.headers,
            meta,
            headers,
            lambda f, last: reading.read_range(engine, req, meta, f, last),
            in_memory=lambda f, last: reading.memory_range(engine, req, meta, f, last),
        )


async def _completed(
    engine: Engine, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta, status: CacheStatus
) -> tuple[CacheStatus, list[tuple[int, int]]]:
    """`status` for an answer from the stored entry, or PARTIAL when a slice it needs is in neither tier and
    is to be fetched (core.status.with_fetched): a hit is said only when no byte of it comes from origin. With it,
    the slices to fetch that are probed before the head, each with the last its fill may run to
    (respond.probed_slices), for first_fetched."""
    needed = answer_slices(request.method, req.headers, meta, engine.slice_size)
    missing = await engine.store.missing(req.entry_key, meta, needed) if needed else []
    # Any fill it starts is a copy of its own: the answer was cut at the first slice it lacked. Before any byte is
    # sent, the copy goes and the object is fetched whole (EdgeHandler._cached_loop). Not one another worker is
    # writing (being_written): that dropped the worker's copy from the shared disk, and asked the origin again.
    if (
        missing
        and not entry.versioned(meta)
        and not all(_brought(engine, req, meta, i) for i in missing)
        and not await being_written(engine.store, req, meta)
    ):
        raise VersionChanged(f"the stored copy {meta.version} names no version and lacks slices {missing[:3]}")
    if missing:
        dropped = engine.ghosts.slice_dropped
        version = meta.slice_version
        observe.trace(request).evicted = any(dropped(slice_name(req.entry_key, version, i)) for i in missing)
    probes = probed_slices(request.method, req.headers, meta, engine.slice_size, needed, missing) if missing else []
    return with_fetched(status, bool(missing)), probes


async def first_fetched(
    engine: Engine, req: FillRequest, meta: ObjectMeta, probes: list[tuple[int, int]], own: Fill | None = None
) -> None:
    """The first byte of each slice `probes` names (the first the answer fetches; of a multipart Range, each
    part's first too), read before its head is sent (as the fast path's diskhit._partial): an origin that has another
    version now (VersionChanged) or fails is then met before any byte of the stored copy went out, and the request
    starts again, instead of an answer cut after the slices it had. The fill this starts goes on; the answer reads
    its slices from it, or from the store."""
    for index, last_needed in probes:
        if _vouched(engine, req, meta, index):
            continue  # a fill read before brings it, of this copy's bytes; or it is stored now
        async with contextlib.aclosing(reading.read_slice(engine, req, meta, index, 0, 1, last_needed, own)) as probe:
            await anext(probe, None)


def _vouched(engine: Engine, req: FillRequest, meta: ObjectMeta, index: int) -> bool:
    """Is slice `index` in memory, or brought by a fill whose head says it is this copy's bytes (reading.brings, the
    rule its readers are served by)?"""
    if engine.store.in_memory(req.entry_key, meta, index):
        return True
    brought = _fill_head(engine, req, index)
    return brought is not None and reading.brings(brought, meta)


def _brought(engine: Engine, req: FillRequest, meta: ObjectMeta, index: int) -> bool:
    """Is slice `index` of the copy `meta` on its way: in memory now, or brought by a fill of that very copy (the
    fill of a HEAD's miss, say, that goes on with the body)?"""
    if engine.store.in_memory(req.entry_key, meta, index):
        return True
    brought = _fill_head(engine, req, index)
    return brought is not None and brought.meta.slice_version == meta.slice_version


def _fill_head(engine: Engine, req: FillRequest, index: int) -> FillHead | None:
    """The head of the fill under way that brings slice `index`, once it came (None: no such fill, or its head is
    still to come or failed)."""
    fill = engine.fills.find(req, index)
    head = fill.head if fill is not None else None
    if head is None or not head.done() or head.cancelled() or head.exception() is not None:
        return None
    return head.result()


def fill_fields(
    head: FillHead, ours: bool, status: CacheStatus, spread_from: Member | None, req: FillRequest
) -> tuple[ObjectMeta, list[tuple[str, str]]]:
    """A miss's answer from its fill's head: the metadata and the fields it is sent with. The request that started
    the fill (`ours`) gets fields a shared cache keeps from everyone else (private="f"). `req`: the request's, for
    why it went forward (FillRequest.found)."""
    meta = answered_from(head, ours)
    detail = fill_detail(head, spread_from is not None)
    cstatus = cache_status_header(status, stored=head.store, detail=detail, found=req.found)
    age = current_age(meta.headers, meta.request_time, meta.response_time, time.time())
    return meta, base_headers(meta.headers, int(age), cstatus)


def whole_stream(head: FillHead, fill: Fill) -> bool:
    """Does the fill bring the whole body from its first byte (not a ranged fill), so that an answer it does not
    store can be streamed from it (Fill.stream) as the origin sends it?"""
    return head.start == 0 and fill.last_index is None


def peer_of(head: FillHead, req: FillRequest) -> tuple[bool, bool]:
    """Whether a peer's cache answered a miss's fill (its bytes counted as the peer's), and whether the ring moved:
    that peer was the previous owner a look-aside asked, not the owner a spread copy is filled from (ring-moved)."""
    from_peer = head.peer is not None
    return from_peer, from_peer and req.spread_from is None


def peer_marks(t: observe.Trace, head: FillHead, req: FillRequest) -> None:
    """What the trace of a miss answered from its fill notes of the peer that answered that fill (peer_of)."""
    t.from_peer, t.moved = peer_of(head, req)


FromFill = Literal["stored", "stream", "pass"]


def from_fill(head: FillHead, fill: Fill, ours: bool, asked: Headers) -> FromFill:
    """How a miss is answered once its fill has its head: read as it is stored ("stored": of known length);
    streamed from the fill as the origin sends it ("stream": an answer not stored that the fill brings whole from
    its first byte); or passed through ("pass"): an uncacheable answer another request started is never shared, and
    one the fill does not bring whole (a ranged fill's, or a HEAD's first slice) is asked again for exactly what the
    client wants. So is a range (`asked`: the request's fields) of another request's answer too large to store."""
    if not head.shared and not ours:
        return "pass"
    if head.store and head.meta.length >= 0:
        return "stored"
    if not head.store and not ours and get_first(asked, "range") is not None:
        return "pass"
    return "stream" if whole_stream(head, fill) else "pass"


async def serve_fill(
    engine: Engine,
    request: web.BaseRequest,
    req: FillRequest,
    fill: Fill,
    head: FillHead,
    status: CacheStatus,
    ours: bool,
    expected: Expected | None = None,
) -> web.StreamResponse:
    """The answer from a fill whose head has come: read as it is stored when it is shared, else streamed.
    `expected`: the request, as the fill's reader until it reads (proxy.expecting)."""
    observe.mark(request, status)
    peer_marks(observe.trace(request), head, req)
    way = from_fill(head, fill, ours, req.headers)
    meta, headers = fill_fields(head, ours, status, req.spread_from, req)
    if way == "pass" or (way == "stored" and await _multipart_passes(engine, request, req, meta)):
        if expected is not None:  # it asks the origin itself
            expected.release()
        return await pass_through(request, engine.origin, req, status, detail=unstored(head))
    if way == "stored":
        # Read from this miss's fill, wherever it has put the bytes by now: the origin's, as they are counted.
        read = lambda f, last: reading.read_range(engine, req, meta, f, last, fill)  # noqa: E731
        with engine.reading(req.entry_key):  # the fill runs while it is read (Engine.unread)
            if expected is not None:
                expected.release()
            return await send(request, req.headers, meta, headers, read)
    # Closed as soon as the answer ends, sent or not: a private fill then knows its one reader has left.
    async with contextlib.aclosing(fill.stream(expected)) as body:
        return await send_stream(request, meta.status, headers, body, head.end)
