"""Recognising, without the web framework, what the fast path answers from the cache: the decision it acts on.

find_hit() walks the same steps as EdgeHandler (route, ACL, key, owner: proxy.route; Cache-Control, record, metadata,
freshness, conditions, Range) with only what this process holds in memory, so it never waits: a hit (fresh, or
stale as allowed: proxy.hit), the owner to forward to, or what to load first; find_cold() the fill of a miss or of a
revalidation. Anything else gives None: the full handler answers it as it always has. Its one side effect is the
rate limiter, consulted last and only for a request it will answer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal

from edgecache.config import Site
from edgecache.core import admit, lookaside
from edgecache.core.admit import Reply
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.churn import Next
from edgecache.core.conditional import validates
from edgecache.core.entry import ObjectMeta
from edgecache.core.fillcost import cold_run, stored_run
from edgecache.core.forward import must_pass
from edgecache.core.freshness import Freshness, Use, freshness_of, stored_use
from edgecache.core.headers import Headers, get_first
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import CacheKey, PrimaryRecord, digest, entry_key
from edgecache.core.status import CacheStatus, cache_status_header, found_of
from edgecache.proxy import route
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.hit import STATUS_OF_USE, Hit, decided, planned_hit
from edgecache.proxy.respond import Planned
from edgecache.proxy.route import Elsewhere, Forward, Refused, Routed
from edgecache.proxy.shared import Shared


@dataclass(frozen=True, slots=True)
class Load:
    """What find_hit() needs from the disk tier before it can decide: the record, then the metadata."""

    primary: str
    entry_key: str | None  # None: the primary record first


@dataclass(frozen=True, slots=True)
class Pass:
    """A GET or HEAD the cache does not answer, sent to the origin as it is and its answer relayed, nothing stored
    (proxy.passing): PASS for a client's no-store or credentials; MISS for a conditional request on an object with
    nothing stored (core.admit.unfilled), or a miss whose fill's answer it may not serve (serving.from_fill), as the
    full handler passes them through."""

    req: FillRequest
    status: CacheStatus
    method: str = "GET"
    keep_alive: KeepAlive = KeepAlive.OPEN  # the client's version and its connection's fate (decide.Decider says)
    viewer: str | None = None  # a hop's viewer (Hit.viewer)
    evicted: bool = False  # a MISS of an object this node had stored and dropped: its cause
    failover: bool = False  # a hop from a node standing in for this one (Cold.failover)
    uncacheable: bool = False  # a MISS whose fill's answer may not be stored: its cause
    began: float | None = None  # a miss's: when it was decided to be one (monotonic); None: now
    origin_ms: float | None = None  # and how long its fill's head took (logged should the pass-through fail)
    moved: bool = False  # a MISS whose fill was a look-aside at the previous owner: its cause (ring-moved)
    churned: Next | None = None  # a MISS out of fills (core.churn: RELAY, OVERTAKEN, SPENT): one origin request relayed
    detail: str = ""  # its Cache-Status detail: why its fill's answer is not stored (fill.unstored)
    expired: bool = False  # a MISS of a stale entry, its revalidation's answer not one to serve: its cause


def find_hit(
    shared: Shared,
    method: str,
    host: str,
    target: str,
    headers: Headers,
    client: str,
    basis: bool = False,
    hop_field: str | None = None,
    validated: Validated | None = None,
    admitted: bool = False,
    copy: bool = False,
    placed: route.Here | None = None,
    named: tuple[str, ...] | None = None,
) -> Hit | Load | Forward | Elsewhere | Refused | Pass | None:
    """The hit this request is, if it is one; or the owner to forward it to; or its pass-through. A `basis` answer is
    one that single ranges are cut from (decide.Decider._ranged), never sent itself. `validated`: the stored entry
    answers whatever its freshness, as the origin has just confirmed it ("304": Use.REVALIDATE), or as it stands in
    for an origin that failed its revalidation ("stale-if-error": Use.STALE_OK, RFC 5861 4). `copy`: a hot object's
    copy was filled for this request, `placed`: the request's fill was started here (route.routed). `named`: the
    Vary another variant's answer to the request's fill named, as find_cold() takes it."""
    routed = route.routed(shared, method, host, target, headers, client, basis, hop_field, admitted, copy, placed)
    if not isinstance(routed, Routed):
        return routed
    if parse_cache_control(headers).no_store or must_pass(headers) is not None:
        return _passed(shared, routed, method, headers, admitted, CacheStatus.PASS)
    stored = _stored(shared, routed.site, routed.host, routed.key, headers, validated is not None, named)
    if not isinstance(stored, _Stored):
        return stored
    if not routed.fills and not lookaside.may_use(stored.use, validated is not None):
        return None  # a look-aside for an entry held stale: find_cold() refuses it, not held
    field = _FIELDS[stored.use]
    if stored.use is Use.REVALIDATE:  # just confirmed by the origin: as_fetched says why it was asked (fwd_of)
        field = cache_status_header(CacheStatus.REVALIDATED)
    if validated == "stale-if-error":  # it stands in: stale, and the field says why
        stored, field = replace(stored, use=Use.STALE_OK), _STALE_IF_ERROR
    planned = planned_hit(method, headers, stored.meta, stored.now, field)
    if planned is None:
        return None
    if not admitted and (too_many := _refusal(shared, routed)) is not None:
        return routed.refused(too_many, method, headers)
    shared.engine.store.touch_meta(stored.ekey, routed.key.primary)
    return _hit(shared, routed, stored, headers, planned)


@dataclass(frozen=True, slots=True)
class Cold:
    """A miss the fast path fills itself (find_cold): the fill's request and its run of slices, as the full handler
    would start it (core.fillcost), and the stored entry it revalidates, if any."""

    req: FillRequest
    first: int
    last: int | None
    validate: ObjectMeta | None = None
    method: str = "GET"
    keep_alive: KeepAlive = KeepAlive.OPEN  # the client's version and its connection's fate (decide.Decider.cold)
    viewer: str | None = None  # a hop's viewer (Hit.viewer)
    failover: bool = False  # a hop from a node standing in for this one's next owner, which is down (peer_down)


def find_cold(
    shared: Shared,
    method: str,
    host: str,
    target: str,
    headers: Headers,
    client: str,
    admitted: bool = False,
    named: tuple[str, ...] | None = None,
) -> Cold | Refused | Pass | None:
    """The fill to start for a plain miss (once find_hit() has loaded what the disk holds): of an object with no
    metadata here, or whose stored entry must be revalidated before it is used. Or the refusal (core.admit) of one
    the rate limiter refuses, or of an only-if-cached request or an owner's look-aside with nothing stored; a hot
    object another node owns is filled from that owner, for this node's copy (FillRequest.spread_from); a conditional
    request's revalidation too (asked with the entry's validators; the viewer's are judged once the origin answers).
    None for a stale entry it may serve. A Vary'd record's miss is filled with the fields its Vary (or the Vary its
    first fill `named`) names, as the full handler fills it."""
    # basis: another node's object is Elsewhere unless hot now, not asking the popularity gate again (find_hit did)
    routed = route.routed(shared, method, host, target, headers, client, True, None, admitted, copy=True)
    if isinstance(routed, Refused):
        return routed
    if not isinstance(routed, Routed):
        return None
    cc = parse_cache_control(headers)
    if cc.no_store or must_pass(headers) is not None:
        return None
    entry, site = _entry(shared, routed.site, routed.host, routed.key, headers, named), routed.site
    if entry is not None and entry.meta is not None:  # a stored entry: only its revalidation is filled here
        if not routed.fills:  # a look-aside find_hit() did not answer is not held, unless fresh
            return _not_held(routed, entry.meta, entry.soft_before, method, headers)
    else:
        instead = admit.unfilled(not routed.fills, False, cc.only_if_cached, validates(headers))
        if isinstance(instead, Reply):  # the limiter first, as for any request (a hop's viewer was judged)
            reply = (None if admitted else _refusal(shared, routed)) or instead
            return replace(routed.refused(reply, method, headers), counted=routed.fills)
        if instead is admit.PASS:
            evicted = entry is not None and shared.engine.ghosts.object_dropped(digest(entry.ekey))
            return _passed(shared, routed, method, headers, admitted, CacheStatus.MISS, evicted)
    if entry is None:
        return None
    meta, fresh = entry.meta, None
    if meta is not None:
        use, fresh = _use_of(site, meta, entry.soft_before, headers, time.time())
        if meta.length < 0 or use is not Use.REVALIDATE:
            return None  # served as it is stored (fresh, or stale as allowed) by find_hit() or the full handler
        # To be revalidated: only-if-cached forbids it (504), the limiter asked first, as the full handler asks them
        if isinstance(instead := admit.unfilled(False, True, cc.only_if_cached, False), Reply):
            return routed.refused((None if admitted else _refusal(shared, routed)) or instead, method, headers)
    value = get_first(headers, "range")
    size = shared.engine.slice_size
    if meta is None:
        run = cold_run(method, value, size, shared.engine.fill_slices)
    else:
        run = stored_run(value, meta.whole, meta.length, size)
    if not admitted and (too_many := _refusal(shared, routed)) is not None:  # last: a token only for a fill
        return routed.refused(too_many, method, headers)
    req = _fill_request(routed, headers, entry.record, entry.scope, entry.ekey, entry.soft_before)
    req = replace(req, found=found_of(headers, fresh, bool(req.vary)))
    return Cold(req, *run, meta, method, viewer=routed.viewer, failover=routed.failover)


def _not_held(routed: Routed, meta: ObjectMeta, soft_before: float, method: str, headers: Headers) -> Refused | None:
    """An owner's look-aside for an entry held here but not fresh for it: not held (504), and not a viewer's request,
    as the full handler refuses it (EdgeHandler._use); None when fresh (the full handler serves it)."""
    use, _ = _use_of(routed.site, meta, soft_before, headers, time.time())
    if lookaside.may_use(use, False):
        return None
    return replace(routed.refused(admit.NOT_HELD, method, headers), counted=False)


def _passed(
    shared: Shared,
    routed: Routed,
    method: str,
    headers: Headers,
    admitted: bool,
    status: CacheStatus,
    evicted: bool = False,
) -> Pass | Refused:
    """The pass-through of a request let in (the rate limiter spends a token, unless `admitted`), or its refusal."""
    if not admitted and (too_many := _refusal(shared, routed)) is not None:
        return routed.refused(too_many, method, headers)
    req = _fill_request(routed, headers)  # keyed by its primary key alone, as the full handler's pass-through
    return Pass(req, status, method, viewer=routed.viewer, evicted=evicted, failover=routed.failover)


def _refusal(shared: Shared, routed: Routed) -> Reply | None:
    """The rate limiter's 429, or None (it spends a token); a hop's viewer was judged by the node it came through."""
    limiter = shared.limiter
    if routed.viewer is not None or limiter is None:
        return None
    return limiter.refusal(routed.client, time.monotonic())


def _fill_request(
    routed: Routed,
    headers: Headers,
    record: PrimaryRecord | None = None,
    scope: str = "",
    ekey: str | None = None,
    soft_before: float = 0.0,
) -> FillRequest:
    """The request a fill for this one sends, keyed as the full handler keys it (EdgeHandler._route); with no
    record, by its primary key alone (EdgeHandler._handle, before any lookup)."""
    site, key = routed.site, routed.key
    generation, vary = (record.generation, record.vary) if record is not None else ("", ())
    return FillRequest(
        site, ekey or key.primary, key.target, key.host, headers, routed.client, site.policy, key.primary,
        generation=generation, scope=scope, host_key=routed.host, path=key.path, key=key, vary=vary,
        spread_from=routed.spread_from, soft_before=soft_before,
    )  # fmt: skip


def _hit(
    shared: Shared,
    routed: Routed,
    stored: _Stored,
    headers: Headers,
    planned: Planned,
) -> Hit:
    """The Hit find_hit() decided: the request it answers, and what it was decided from (Hit.same_basis)."""
    req = _fill_request(routed, headers, stored.record, stored.scope, stored.ekey, stored.soft_before)
    cluster = shared.cluster
    # A stand-in's hit, or a copy's (which names the owner a slice it lacks is fetched from), holds while no peer's
    # health changes.
    health_bound = routed.viewer is None and (routed.failover or routed.spread_from is not None)
    return decided(
        shared, req, stored.meta, planned,
        record=stored.record,
        valid_until=stored.valid_until,
        viewer=routed.viewer,
        fills=routed.fills and not parse_cache_control(headers).only_if_cached,
        use=stored.use,
        changes=cluster.changes if cluster is not None and health_bound else -1,
        failover=routed.failover,
        fresh_until=stored.fresh_until if stored.use is Use.FRESH else -math.inf,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Stored:
    """_stored(): the entry a request is answered from, fresh for it (or stale, as `use` allows)."""

    record: PrimaryRecord
    scope: str
    soft_before: float
    ekey: str
    meta: ObjectMeta
    now: float
    valid_until: float
    fresh_until: float  # _fresh_until()
    use: Use


@dataclass(frozen=True, slots=True)
class _Entry:
    """_entry(): the stored entry a request names, as this process holds it (meta None: not loaded, or none)."""

    record: PrimaryRecord
    scope: str
    soft_before: float  # a response stored before this was soft-purged
    ekey: str
    meta: ObjectMeta | None


def _entry(
    shared: Shared, site: Site, host: str, key: CacheKey, headers: Headers, named: tuple[str, ...] | None = None
) -> _Entry | None:
    """The record this process holds for the key (None: not loaded, or none), its purges, and the entry the
    request's fields name under it; `named`: the Vary an answer to it named (PrimaryRecord.named)."""
    store = shared.engine.store
    record = store.peek_record(key.primary)
    if record is None:
        return None
    record = record.named(named)
    scope, soft_before = store.purged(site.name, host, key.path, record)
    ekey = entry_key(key.primary, record, headers, scope)
    return _Entry(record, scope, soft_before, ekey, store.peek_meta(ekey))


def _use_of(site: Site, meta: ObjectMeta, soft_before: float, headers: Headers, now: float) -> tuple[Use, Freshness]:
    """What the stored response may be used for by this request now (core.freshness.stored_use)."""
    fresh = freshness_of(meta, now, site.policy)
    return stored_use(headers, meta.headers, fresh, site.policy, meta.request_time, soft_before), fresh


def _stored(
    shared: Shared,
    site: Site,
    host: str,
    key: CacheKey,
    headers: Headers,
    validated: bool = False,
    named: tuple[str, ...] | None = None,
) -> _Stored | Load | None:
    """find_hit()'s second step: the record and metadata this process holds (Load: read them from disk first),
    then freshness for this request and soft purges."""
    entry = _entry(shared, site, host, key, headers, named)
    if entry is None:
        return Load(key.primary, None)
    meta = entry.meta
    if meta is None:
        return Load(key.primary, entry.ekey)
    if meta.length < 0:
        return None
    now = time.time()
    use, fresh = _use_of(site, meta, entry.soft_before, headers, now)
    if use is Use.REVALIDATE and not validated:
        return None
    until = _fresh_until(headers, fresh, now)
    return _Stored(
        entry.record, entry.scope, entry.soft_before, entry.ekey, meta, now, _next_tick(fresh, now, until), until, use
    )


def _fresh_until(headers: Headers, fresh: Freshness, now: float) -> float:
    """The moment a fresh entry stops being usable for this request (core.freshness.usable): its freshness runs
    out, or the request's max-age or min-fresh does. Each is a bound on the age, which grows with the clock."""
    until = now + fresh.lifetime - fresh.age
    rcc = parse_cache_control(headers)
    if rcc.max_age is not None:
        until = min(until, now + rcc.max_age - fresh.age)
    if rcc.min_fresh is not None:
        until = min(until, now + fresh.lifetime - fresh.age - rcc.min_fresh)
    return until


def _next_tick(fresh: Freshness, now: float, fresh_until: float) -> float:
    """The first moment the same request could be answered otherwise: Age ticks, or freshness runs out."""
    return min(now + (1.0 - fresh.age % 1.0), fresh_until)


_FIELDS = {use: cache_status_header(status) for use, status in STATUS_OF_USE.items()}
_STALE_IF_ERROR = cache_status_header(CacheStatus.STALE, detail="stale-if-error")
Validated = Literal["304", "stale-if-error"]  # find_hit(): why a stale entry answers
