"""Recognising a fresh cache hit without the web framework: the decision the fast path acts on.

find_hit() walks the same steps as EdgeHandler (route, ACL, key, owner, Cache-Control, record, metadata,
freshness, conditions, Range) but only with what this process already holds in memory, so it never waits.
Anything it is not sure of (a miss, a stale entry, a multipart range, a peer that owns the key, an odd request)
gives None, and the request goes to the full handler instead, which then answers it exactly as it always has.
It has no side effect except the rate limiter, consulted last and only for a request it will answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from edgecache.config import Site
from edgecache.core import ranges
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import must_pass
from edgecache.core.freshness import Freshness, Use, current_age, evaluate, usable
from edgecache.core.headers import Headers, get_all, get_first
from edgecache.core.hop import FIELD as HOP
from edgecache.core.keys import BadTarget, CacheKey, PrimaryRecord, entry_key, make_key
from edgecache.core.purge import PurgeTable
from edgecache.core.route import normalise_host
from edgecache.core.signing import verify
from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.proxy.engine import FillRequest
from edgecache.proxy.handler import EdgeHandler
from edgecache.proxy.respond import NOT_MODIFIED_FIELDS, base_headers, plan

# A hit whose range spans more slices than this goes to the full handler, which streams it slice by slice;
# the fast path holds every slice it serves (open files or memory) before it sends the head.
MAX_SLICES = 8


@dataclass(slots=True)
class Hit:
    status: int
    headers: list[tuple[str, str]]  # everything but the fields the connection adds (Date, Server, Connection)
    req: FillRequest
    meta: ObjectMeta
    first: int  # the body's bytes of the object, inclusive; first > last: no body
    last: int
    site: Site
    # What the answer was decided from: while all of it is the same, the same request gets the same answer.
    router: object
    ring: object
    record: PrimaryRecord
    purges: PurgeTable
    valid_until: float  # when the Age field or freshness next changes
    # The viewer a node of the cluster forwarded this for (a valid hop), who the access log names. Such a hit is
    # never remembered for the same head bytes (decide.Decider): the hop field is worthless after its time window.
    viewer: str | None = None

    def admits(self, client: str, now: float) -> bool:
        """May this client have the answer now: the site's ACL, and its signed-URL check (core.signing)?"""
        return self.site.allows(client) and signed(self.site, self.req.key, client, now)

    def still(self, handler: EdgeHandler, now: float) -> bool:
        """Would find_hit() decide the same for the same request now (the client's address aside)?"""
        return now < self.valid_until and self.same_basis(handler)

    def same_basis(self, handler: EdgeHandler) -> bool:
        """Is everything but the clock as it was when this was decided: routes, ring, purges, record, metadata?"""
        store = handler.engine.store
        return (
            handler.router is self.router
            and (handler.cluster.ring if handler.cluster is not None else None) is self.ring
            and store.purges is self.purges
            and store.peek_record(self.req.primary) is self.record
            and store.peek_meta(self.req.entry_key) is self.meta
        )


@dataclass(frozen=True, slots=True)
class Load:
    """What find_hit() needs from the disk tier before it can decide: the record, then the metadata."""

    primary: str
    entry_key: str | None  # None: the primary record first


def find_hit(
    handler: EdgeHandler,
    method: str,
    host_field: str | None,
    target: str,
    headers: Headers,
    client: str,
    any_size: bool = False,
) -> Hit | Load | None:
    """The hit this request is, if it is one. `any_size` lifts MAX_SLICES: the answer is then only a basis that
    single ranges are cut from (see fastpath), never sent whole."""
    if method not in ("GET", "HEAD") or not target.startswith("/"):
        return None  # absolute-form targets and everything but GET/HEAD: the full handler's checks
    host = normalise_host(host_field)
    site = handler.router.match(host) if host is not None else None
    if host is None or site is None:
        return None
    try:
        key = make_key(site.name, host, target, site.key_query)
    except BadTarget:
        return None
    cluster = handler.cluster
    hop = cluster.honoured(get_all(headers, HOP), method, key.primary) if cluster is not None else None
    if hop is not None:
        client = hop.viewer  # judged (ACL, rate limit) by the node that forwarded it, as EdgeHandler._route says
    elif not site.allows(client):
        return None
    elif cluster is not None:
        owner = cluster.ring.owner(key.primary)
        if owner is None or owner.id != cluster.self_id:
            return None  # another node owns it, or this one stands in for it: forwarding is not ours
    if hop is None and not signed(site, key, client, time.time()):
        return None  # the full handler answers 403 with the reason (a hop's token was checked by its node)
    if parse_cache_control(headers).no_store or must_pass(headers) is not None:
        return None  # passed through by the full handler
    store = handler.engine.store
    record = store.peek_record(key.primary)
    if record is None:
        return Load(key.primary, None)
    scope, soft_before = store.purges.lookup(site.name, host, key.path)
    ekey = entry_key(key.primary, record, headers, scope)
    meta = store.peek_meta(ekey)
    if meta is None:
        return Load(key.primary, ekey)
    if meta.length < 0:
        return None
    now = time.time()
    fresh = evaluate(meta.headers, meta.status, meta.request_time, meta.response_time, now, site.policy)
    if fresh is None or usable(headers, meta.headers, fresh, site.policy) is not Use.FRESH:
        return None
    valid_until = _valid_until(headers, fresh, now)
    if meta.response_time < max(soft_before, record.soft_before):
        return None
    planned = _planned(method, headers, meta, now, handler.engine.slice_size, any_size)
    if planned is None:
        return None
    limiter = handler.limiter
    if hop is None and limiter is not None and not limiter.allow(client, time.monotonic()):
        return None  # the full handler answers 429 (and counts it) as it always does
    store.touch_meta(ekey, key.primary)
    status, fields, first, last = planned
    req = FillRequest(
        site,
        ekey,
        key.target,
        key.host,
        headers,
        client,
        site.policy,
        key.primary,
        generation=record.generation,
        scope=scope,
        host_key=host,
        path=key.path,
        key=key,
        vary=record.vary,
    )
    ring = cluster.ring if cluster is not None else None
    viewer = hop.viewer if hop is not None else None
    return Hit(
        status, fields, req, meta, first, last, site, handler.router, ring, record, store.purges, valid_until, viewer
    )


def signed(site: Site, key: CacheKey, client: str, now: float) -> bool:
    """Does the request carry a valid token, when its site wants one? As the full handler's _route checks it."""
    return site.signing is None or verify(site.signing, key.path, key.unkeyed, client, now) is None


def renewed(hit: Hit, handler: EdgeHandler, now: float) -> Hit | None:
    """The same hit once its time ran out, if only the clock moved (same_basis): freshness and Age are worked out
    again, but not the route, key, record or metadata. None: decide it from scratch (find_hit).

    Every hit's Age ticks once a second, so without this each hot object went back through the full parse once a
    second, and objects filled together all did so at the same moment (a stall of several ms, the p99). Whatever
    else find_hit() comes to depend on must be part of Hit.same_basis, or a renewal would miss it.
    """
    if not hit.same_basis(handler):
        return None
    meta, asked, policy = hit.meta, hit.req.headers, hit.site.policy
    fresh = evaluate(meta.headers, meta.status, meta.request_time, meta.response_time, now, policy)
    if fresh is None or usable(asked, meta.headers, fresh, policy) is not Use.FRESH:
        return None
    age = str(max(0, int(fresh.age)))  # fresh.age is current_age() at `now`; written as base_headers writes it
    fields = [("Age", age) if k == "Age" else (k, v) for k, v in hit.headers]
    return replace(hit, headers=fields, valid_until=_valid_until(asked, fresh, now))


def _valid_until(headers: Headers, fresh: Freshness, now: float) -> float:
    """The first moment the same request could be answered otherwise: Age ticks, or freshness runs out."""
    until = now + (1.0 - fresh.age % 1.0)
    until = min(until, now + fresh.lifetime - fresh.age)
    rcc = parse_cache_control(headers)
    if rcc.max_age is not None:
        until = min(until, now + rcc.max_age - fresh.age)
    if rcc.min_fresh is not None:
        until = min(until, now + fresh.lifetime - fresh.age - rcc.min_fresh)
    return until


def _planned(
    method: str, headers: Headers, meta: ObjectMeta, now: float, slice_size: int, any_size: bool = False
) -> tuple[int, list[tuple[str, str]], int, int] | None:
    """The response respond.send() would give for this hit, or None where the fast path does not answer."""
    status, rng = plan(method, headers, meta)
    age = current_age(meta.headers, meta.request_time, meta.response_time, now)
    base = base_headers(meta.headers, int(age), cache_status_header(CacheStatus.HIT))
    if status == 304:
        kept = [(k, v) for k, v in base if k.lower() in NOT_MODIFIED_FIELDS or k in ("Via", "Age", "Cache-Status")]
        return 304, kept, 0, -1
    if status not in (200, 206) or isinstance(rng, ranges.Multi | ranges.Unsatisfiable):
        return None  # 412, 416 and multipart answers stay with the full handler
    if meta.status == 200:
        base.append(("Accept-Ranges", "bytes"))
    if isinstance(rng, ranges.Single):
        first, last = rng.range.first, rng.range.last
        base.append(("Content-Range", ranges.format_content_range(rng.range, meta.length)))
    else:
        first, last = 0, meta.length - 1
        if (stored_range := get_first(meta.headers, "content-range")) is not None:
            base.append(("Content-Range", stored_range))
    if not any_size and last >= first and last // slice_size - first // slice_size >= MAX_SLICES:
        return None
    base.append(("Content-Length", str(max(0, last - first + 1))))
    return status, base, first, last if method == "GET" else first - 1
