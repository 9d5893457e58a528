"""One enum, one string: the cache outcome feeds the Cache-Status header, the access log and metric labels."""

from __future__ import annotations

from enum import StrEnum


class CacheStatus(StrEnum):
    HIT = "hit"  # served from the cache, fresh
    STALE = "stale"  # served stale (stale-while-revalidate, stale-if-error, max-stale)
    REVALIDATED = "revalidated"  # stale entry confirmed by origin with a 304
    MISS = "miss"  # fetched from origin (cacheable or not yet known)
    EXPIRED = "expired"  # stale entry replaced by a new version from origin
    PASS = "pass"  # never cacheable for this request (method, no-store, authorization)
    ERROR = "error"  # we answered with an error of our own
    PEER = "peer"  # forwarded to the node of the cluster that owns the object


# RFC 9211: `fwd` parameter for the statuses that went forward to origin.
_FWD = {
    CacheStatus.MISS: "uri-miss",
    CacheStatus.EXPIRED: "stale",
    CacheStatus.REVALIDATED: "stale",
    CacheStatus.PASS: "bypass",
    CacheStatus.PEER: "miss",
}


def cache_status_header(status: CacheStatus, *, stored: bool = False, detail: str = "", ttl: int | None = None) -> str:
    """RFC 9211 Cache-Status value for this node, e.g. 'edgecache; fwd=uri-miss; stored'."""
    parts = ["edgecache"]
    if status in (CacheStatus.HIT, CacheStatus.STALE):
        parts.append("hit")
    elif status in _FWD:
        parts.append(f"fwd={_FWD[status]}")
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
