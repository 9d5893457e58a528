"""One enum, one string: the cache outcome feeds the Cache-Status header, the access log and metric labels."""

from __future__ import annotations

from enum import StrEnum

from edgecache.core.cachecontrol import parse_cache_control, parse_pragma_no_cache
from edgecache.core.freshness import Freshness
from edgecache.core.headers import Headers


class CacheStatus(StrEnum):
    HIT = "hit"  # served from the cache, fresh
    STALE = "stale"  # served stale (stale-while-revalidate, stale-if-error, max-stale)
    REVALIDATED = "revalidated"  # stale entry confirmed by origin with a 304
    MISS = "miss"  # fetched from origin (cacheable or not yet known)
    EXPIRED = "expired"  # stale entry replaced by a new version from origin
    PARTIAL = "partial"  # a stored entry served, some of the answer's slices fetched from origin for it
    PASS = "pass"  # never cacheable for this request (method, no-store, authorization)
    ERROR = "error"  # we answered with an error of our own
    PEER = "peer"  # forwarded to the node of the cluster that owns the object


# RFC 9211 section 2.2: the `fwd` parameter for the statuses that went forward (to an origin, or to the owner).
_FWD = {
    CacheStatus.MISS: "uri-miss",
    CacheStatus.EXPIRED: "stale",
    CacheStatus.REVALIDATED: "stale",
    CacheStatus.PARTIAL: "partial",  # "the cache had a partial response and needed to complete it"
    CacheStatus.PASS: "bypass",
    CacheStatus.PEER: "miss",
}

# Statuses whose header says `hit`: only true while no byte of the answer was fetched. (A revalidated answer says
# fwd=stale already, the one reason RFC 9211 lets it give, whether or not slices were fetched after the 304.)
_SAYS_HIT = frozenset({CacheStatus.HIT, CacheStatus.STALE})
# Statuses counted as misses, once each, by cause (edgecache_misses_total).
MISSES = frozenset({CacheStatus.MISS, CacheStatus.EXPIRED, CacheStatus.PARTIAL})


def of_fill(replaced: bool) -> CacheStatus:
    """The status of an answer from a miss's fill: EXPIRED when the fill replaces a stale entry it revalidated
    (the origin sent a new answer, not a 304), else MISS."""
    return CacheStatus.EXPIRED if replaced else CacheStatus.MISS


def with_fetched(status: CacheStatus, fetched: bool) -> CacheStatus:
    """The status of an answer made from a stored entry once it is known whether some of its bytes were fetched:
    `hit` (or stale) only when none was; else PARTIAL. Other statuses say where bytes came from
    already. The handler asks it before the head (the slices missing then), the request's record after the body
    (the bytes the served-bytes counter saw come from origin), so a slice lost between the two is still told."""
    return CacheStatus.PARTIAL if fetched and status in _SAYS_HIT else status


def of_304(worker: CacheStatus | None) -> CacheStatus:
    """The status of an answer from a stored entry a fill's 304 just confirmed: REVALIDATED, or `worker`'s when the
    fill read what another worker's origin request left on the shared disk (proxy.revalidating, FillHead.worker).
    That answer is told as a request joining that origin request in its own worker is told (fwd=stale;
    fwd-status=304, or fwd=uri-miss for a cold one), never `hit`: a copy that must be validated, or that no cache
    held, was not served from the cache without the origin."""
    return worker or CacheStatus.REVALIDATED


# What a request found when it was decided, for the `fwd` of its answer (RFC 9211 2.2), carried from there to where
# the field is written (FillRequest.found): by then a revalidation may have made a stale entry fresh.
FOUND_FRESH = "request"  # a fresh entry that the request's own directives kept from use
FOUND_OTHER_VARIANT = "vary-miss"  # no entry for its variant, but the URI's answer Varies: another variant's stored


def found_of(asked: Headers, fresh: Freshness | None, varies: bool) -> str:
    """What a request found (FOUND_*, "" for nothing of note) from the `fresh`ness of the entry for its variant (None:
    none is stored) and whether the URI's answer `varies`. FOUND_FRESH: the entry was fresh and the request's own
    directives alone kept it from use (RFC 9111 5.2.1: no-cache, Pragma: no-cache, a max-age below its age, a
    min-fresh beyond the freshness it has left); a stale entry goes forward for being stale, whatever was asked."""
    if fresh is None:
        return FOUND_OTHER_VARIANT if varies else ""
    if not fresh.fresh:
        return ""
    cc = parse_cache_control(asked)
    kept = cc.no_cache or parse_pragma_no_cache(asked) or (cc.max_age is not None and fresh.age > cc.max_age)
    return FOUND_FRESH if kept or (cc.min_fresh is not None and fresh.lifetime - fresh.age < cc.min_fresh) else ""


def fwd_of(status: CacheStatus, found: str = "") -> str | None:
    """RFC 9211 2.2's `fwd` of an answer with `status`: `request` for a stored entry revalidated or replaced when
    the request found it fresh (FOUND_FRESH), `vary-miss` for a miss that found another variant stored, else by
    `status` alone (`stale` for a revalidated or replaced entry)."""
    if found == FOUND_FRESH and status in (CacheStatus.REVALIDATED, CacheStatus.EXPIRED):
        return "request"
    if found == FOUND_OTHER_VARIANT and status is CacheStatus.MISS:
        return "vary-miss"
    return _FWD.get(status)


def cache_status_header(
    status: CacheStatus,
    *,
    stored: bool = False,
    detail: str = "",
    ttl: int | None = None,
    found: str = "",
) -> str:
    """RFC 9211 Cache-Status value for this node, e.g. 'edgecache; fwd=uri-miss; stored'. `found`: what the request
    found when it was decided, for the reason its fwd parameter gives (fwd_of)."""
    parts = ["edgecache"]
    if status in (CacheStatus.HIT, CacheStatus.STALE):
        parts.append("hit")
    elif (fwd := fwd_of(status, found)) is not None:
        parts.append(f"fwd={fwd}")
        if status is CacheStatus.REVALIDATED:
            parts.append("fwd-status=304")
    if ttl is not None:
        parts.append(f"ttl={ttl}")
    if stored:
        parts.append("stored")
    if detail:
        parts.append(f'detail="{detail}"')
    elif status is CacheStatus.STALE:
        parts.append('detail="stale"')
    elif status is CacheStatus.PEER:
        parts.append('detail="peer"')
    return "; ".join(parts)


class MissCause(StrEnum):
    """Why a request was a miss (edgecache_misses_total{cause}): one cause per request."""

    COLD = "cold"  # never stored here (or stored so long ago that the node forgot it)
    EXPIRED = "expired"  # stored, stale: fetched again
    EVICTED = "evicted"  # stored here, then dropped to make room (the eviction ghost remembers it)
    RING_MOVED = "ring-moved"  # this node became its owner, and the previous owner still held it (core.lookaside)
    PEER_DOWN = "peer-down"  # another node owns it and is down: this node serves it in its place
    UNCACHEABLE = "uncacheable"  # the origin's answer may not be stored
    CHANGING = "changing"  # every fill met a new version: one origin answer relayed, not stored (core.churn)


def miss_cause(
    *, uncacheable: bool, expired: bool, evicted: bool, failover: bool, moved: bool = False, changing: bool = False
) -> MissCause:
    """The one cause of a miss, from what the request found. The answer's own verdict comes first (an uncacheable
    answer is that, whatever was stored), then what this node held (a stale copy, a dropped one), then why this
    node was asked at all (ownership moved here from a node that held it; the owner is down), and cold when none
    of these is known."""
    if changing:  # the answer was relayed, not stored, whatever the origin said of storing it
        return MissCause.CHANGING
    if uncacheable:
        return MissCause.UNCACHEABLE
    if expired:
        return MissCause.EXPIRED
    if evicted:
        return MissCause.EVICTED
    if moved:
        return MissCause.RING_MOVED
    if failover:
        return MissCause.PEER_DOWN
    return MissCause.COLD
