"""Ring continuity: the owner of an object it does not hold asks the previous owner before the origin.

When ownership moves (a node added, or back), rendezvous hashing makes the previous owner of each moved key its
second owner now (core.ring), and that node still holds the object. So a miss on the owner first asks the next
owner that is up, with a signed look-aside hop (core.hop): "answer from your cache only, never fill, never
forward". What it answers is taken like an origin's answer only when it proves to be the same version as the
slices already stored here and is fresh here, for a shared cache and for the viewer's request (judge: the asked
node is not trusted to have kept may_use), and the peer's Age is kept, so the copy ages on from where the peer's was.

Pure: the rules of whom to ask, what the asked node may answer and which answers may be stored.
Nothing here raises on a peer's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from edgecache.core import entry, ranges
from edgecache.core.cachecontrol import parse_cache_control, parse_pragma_no_cache
from edgecache.core.forward import VIA
from edgecache.core.freshness import Policy, Use, evaluate, merge_304, storable, stored_use
from edgecache.core.headers import Headers, list_values
from edgecache.core.ring import Member

# The Cache-Status detail (and the access log's upstream) of an answer filled from a peer's cache.
DETAIL = "peer-lookaside"
# The reason a look-aside is answered 504, as only-if-cached is: the owner then asks the origin.
NOT_HELD = "look-aside: not held here fresh and whole"


class Outcome(StrEnum):
    """How a look-aside ended: the label of edgecache_peer_lookaside_total."""

    HIT = "hit"  # the peer's bytes were stored
    MISS = "miss"  # the peer does not hold it (fresh and whole)
    OTHER_VERSION = "other-version"  # another version than the slices stored here, or another Vary: never mixed
    STALE = "stale"  # not fresh here (Age carried), or not for a shared cache to store: the origin is asked
    UNUSABLE = "unusable"  # no validators to prove the version, or a malformed answer
    ERROR = "error"  # refused, timed out, broken: the origin is asked at once
    BEHIND = "behind"  # not asked: it may lack a purge applied here covering it (cluster.behind): origin asked


def previous_owner(up: Sequence[Member], self_id: str) -> Member | None:
    """Whom to ask: the next owner that is up after this node, when this node is the first one that is up (it
    owns the key). That is the node which owned it before this one came (or came back), or which took it while
    this one was down; None when this node does not own the key or is alone."""
    if len(up) < 2 or up[0].id != self_id:
        return None
    return up[1]


def may_answer(held: bool, fresh: bool, missing_slices: bool) -> bool:
    """Whether the asked node answers a look-aside, from its cache alone: only an entry it holds, fresh, with
    every slice the answer needs. Anything else would make it fill from the origin, which the owner does itself."""
    return held and fresh and not missing_slices


def may_use(use: Use, validated: bool) -> bool:
    """Whether an entry held here answers a look-aside, by what it may be used for (core.freshness.stored_use): held
    fresh, or just confirmed by the origin. Stale as a viewer may have it (stale-while-revalidate, stale-if-error, a
    max-stale) it is not held: the new owner would store a copy already stale here as its miss, and the
    revalidation stale-while-revalidate starts is a fill, which the owner makes itself. Both paths ask this."""
    return may_answer(True, validated or use is Use.FRESH, False)


@dataclass(frozen=True, slots=True)
class Asked:
    """What a look-aside asked for, which its answer is judged by."""

    fields: Headers  # the request as sent: the entry key's Vary'd fields (keys.keyed_fields), the Range
    span: ranges.ByteRange | None  # the range asked; None: the whole object
    held_version: str | None  # the version of the slices already stored here, if any
    varied: tuple[str, ...]  # the fields the entry key asked under Varies on, sorted; (): none known here
    policy: Policy  # the site's: what this node counts fresh
    at: float  # when it was asked
    soft_before: float = 0.0  # a soft purge of the object at this time (0: none)
    viewer: Headers = ()  # the fields of the request the fill is for: its no-cache, max-age, min-fresh


def judge(status: int, headers: Headers, asked: Asked, now: float) -> Outcome:
    """Whether the peer's answer may be stored like an origin's: a 200 or 206 from its cache, for the range
    asked, with validators that name a version (a strong ETag, or Last-Modified and the length), that version the
    one of the slices already stored here when there are any, Varied as the key asked (when it names any), and
    fresh here now (fresh_here). A peer of another release, or a faulty one, may answer what a peer of this one
    never does (lookaside.may_use); its bytes are then not the viewer's: the origin is asked, as for any miss."""
    if status not in (200, 206):
        return Outcome.MISS
    judged = entry.judge(status, headers, asked.span)
    if isinstance(judged, entry.Partial):
        length: int | None = judged.length
    elif isinstance(judged, entry.Whole):
        length = judged.length
    else:
        return Outcome.UNUSABLE
    version = entry.version_of(headers, length)
    if version is None or length is None:
        return Outcome.UNUSABLE
    if asked.held_version is not None and version != asked.held_version:
        return Outcome.OTHER_VERSION
    if asked.varied and entry.vary_names(headers) != asked.varied:
        return Outcome.OTHER_VERSION  # selected by other fields than the ones sent: maybe another variant's bytes
    return Outcome.HIT if fresh_here(status, headers, asked, now) else Outcome.STALE


def fresh_here(status: int, headers: Headers, asked: Asked, now: float) -> bool:
    """Whether an answer from a peer's cache may be stored here and served as fresh: storable by a shared cache
    (RFC 9111 3: no no-store, no private, no Vary: *, ...), and fresh for this node by its own policy with the
    peer's Age carried (4.2.3), no no-cache, made by the origin after any soft purge of it here. The rule this
    node's own look-aside answers keep (may_use: held fresh), checked again on the side that stores them; and one
    the viewer's request takes as a stored answer (5.2.1: its no-cache, max-age, min-fresh), which the peer, asked
    with the key's fields alone, never saw. Its answer goes to that viewer as the fill's: the origin's, else."""
    shared = storable("GET", status, asked.fields, headers, asked.policy).store
    return shared and _fresh_for(status, headers, asked, now)


def from_owner(status: int, headers: Headers, asked: Asked, now: float, held: Headers | None = None) -> bool:
    """Whether the owner's answer to the fill of a hot object's copy (core.popularity) is taken as the origin's. The
    owner answers from its cache what it holds fresh by its own clock (or stale, as stale-while-revalidate lets it
    answer its viewers), asked with the key's fields alone: an answer this node stores is taken only as fresh_here
    takes a look-aside's, for a shared cache here and for the viewer's own request (RFC 9111 5.2.1: a child cache
    honours its request's max-age and min-fresh, or asks the origin). An answer no shared cache may store (private,
    no-store, ...) the owner never holds: it passed on the origin's answer to this fill, which is served to its
    viewer as a forward's would be and never kept (proxy.fillhead judges the head by the same storable); asking the
    origin again would double its load for every hot object it answers so. A 304 to the revalidation of the copy
    `held` (its stored fields) is judged as the copy it makes (RFC 9111 4.3.4): the owner confirms it from its cache,
    never the origin, and a copy its viewer's max-age made stale here would be served again as it was."""
    if status == 304 and held is not None:
        return _fresh_for(200, merge_304(held, headers), asked, now)
    if not storable("GET", status, asked.fields, headers, asked.policy).store:
        return True
    return _fresh_for(status, headers, asked, now)


def _fresh_for(status: int, headers: Headers, asked: Asked, now: float) -> bool:
    """Fresh here, with the peer's Age carried, and for the viewer's request: a stored answer's use (5.2.1)."""
    fresh = evaluate(headers, status, asked.at, now, now, asked.policy)
    made = now - fresh.age  # when the origin answered, by the age it has now
    return stored_use(asked.viewer, headers, fresh, asked.policy, made, asked.soft_before) is Use.FRESH


def asks_of_age(viewer: Headers) -> bool:
    """Whether a request asks something of a stored answer's age itself (RFC 9111 5.2.1: no-cache, Pragma: no-cache,
    max-age, min-fresh). A fill a peer's cache may answer is judged for the request that started it alone (the
    `viewer` of fresh_here and from_owner): such a request does not join it before its head shows where its answer
    came from, and fills for itself, judged on its own (proxy.fillhead.answers)."""
    cc = parse_cache_control(viewer)
    return cc.no_cache or cc.max_age is not None or cc.min_fresh is not None or parse_pragma_no_cache(viewer)


def origin_fields(headers: Headers) -> Headers:
    """The peer's answer as the origin sent it: without the Via member and the Cache-Status member the peer
    added last (respond.base_headers), so a copy stored here serves the fields a copy from the origin would.
    Age stays: it is how old the peer's copy is, and current_age goes on from it."""
    via = list_values(headers, "via")
    if via and via[-1] == VIA:
        via = via[:-1]
    status = list_values(headers, "cache-status")[:-1]
    kept = [(k, v) for k, v in headers if k.lower() not in ("via", "cache-status")]
    return (*kept, *(("Via", ", ".join(via)),) * bool(via), *(("Cache-Status", ", ".join(status)),) * bool(status))
