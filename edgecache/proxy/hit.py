"""A hit: the decision the fast path acts on to answer a request from the cache, and what is made of it.

A Hit is made in one place (decided), from a stored entry (lookup.find_hit) or from a fill's head alone
(fillplan.basis). Here: what it holds and whether it still holds (Hit.still), its answer planned as respond.send()
gives it (planned_hit), its Age at the moment it is sent (age_of), its copies (copied), and the answer to a miss
once its fill's head is in (as_fetched).
"""

from __future__ import annotations

import operator
import time
import weakref
from dataclasses import dataclass, fields, replace

from edgecache.config import Site
from edgecache.core import admit, ranges
from edgecache.core.admit import Reply
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import Use, current_age, initial_age
from edgecache.core.headers import Headers
from edgecache.core.keys import PrimaryRecord
from edgecache.core.purge import PurgeTable
from edgecache.core.status import CacheStatus, cache_status_header, of_304
from edgecache.proxy import encode
from edgecache.proxy.fill import FillHead, answered_from, fill_detail
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.respond import Planned, base_headers, multipart, new_boundary, plan_answer
from edgecache.proxy.shared import Shared


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
    # Weakly: a memo's hits would keep every table a purge has replaced since they were decided, each a copy of
    # every mark (295 KB at a site's 10,000), outside the bytes the memos are bounded by. A table gone is not
    # the store's.
    purges: weakref.ref[PurgeTable]
    valid_until: float  # when the Age field or freshness next changes
    # The viewer a node of the cluster forwarded this for (a valid hop), who the access log names. Such a hit is
    # remembered by its head without the hop field (decide.Decider._hopped), and each new hop is checked.
    viewer: str | None
    # May a slice it lacks be fetched for it (diskhit)? Not for a look-aside, which only asks what is held here,
    # nor for an only-if-cached request (RFC 9111 5.2.1.7: never the origin).
    fills: bool
    # FRESH; or stale, as the request or response allows (STALE_OK), or revalidated meanwhile (stale-while-
    # revalidate): Cache-Status hit; detail="stale"; or REVALIDATE, only for the answer to the request whose fill
    # the origin has just confirmed (find_hit's validated) or sent (as_fetched). All but FRESH are never remembered.
    use: Use
    body: bytes  # a 412's or 416's own text, sent instead of the object's bytes (first > last)
    # A stand-in's hit (its owner is down): the cluster's health changes it was decided at; -1 for any other hit,
    # which no peer's health changes (once the owner is up again, the request is the owner's).
    changes: int
    parts: ranges.MultipartLayout | None  # a multipart Range's answer: its parts (proxy.multipart)
    failover: bool  # served in place of an owner that is down (a stand-in's, or a fo=1 hop's)
    # A FRESH hit's answer stays the same but for its Age until this moment (age_of); -inf for any other use.
    fresh_until: float
    initial_age: float  # the entry's age at its response_time (core.freshness.initial_age)

    def refusal(self, client: str, now: float) -> Reply | None:
        """Why this client may not have the answer now (the site's ACL, its signed URL: core.admit); None: it may."""
        key = self.req.key
        return admit.viewer(self.site, key.path, key.unkeyed, client, now)

    def still(self, shared: Shared, now: float) -> bool:
        """Would lookup.find_hit() decide the same for the same request now (the client's address aside)?"""
        return now < self.valid_until and self.same_basis(shared)

    def same_basis(self, shared: Shared) -> bool:
        """Is everything but the clock as it was when this was decided: routes, ring, purges, record, metadata?"""
        store, cluster = shared.engine.store, shared.cluster
        return (
            shared.router is self.router
            and (cluster.ring if cluster is not None else None) is self.ring
            and (self.changes < 0 or (cluster is not None and cluster.changes == self.changes))
            and store.purges is self.purges()
            and store.peek_record(self.req.primary) is self.record
            and store.peek_meta(self.req.entry_key) is self.meta
        )


def decided(
    shared: Shared,
    req: FillRequest,
    meta: ObjectMeta,
    planned: Planned,
    *,
    record: PrimaryRecord,
    valid_until: float,
    viewer: str | None,
    fills: bool,
    use: Use,
    changes: int,
    failover: bool,
    fresh_until: float,
) -> Hit:
    """The Hit answering `req` as `planned` from `meta`, decided now from what `shared` holds (Hit.same_basis): the
    one place a Hit is made, from a stored entry (lookup.find_hit) or from a fill's head alone (fillplan.basis).
    What the two differ in is named, with no default, so that a field added to Hit is set by both or by neither."""
    ring = shared.cluster.ring if shared.cluster is not None else None
    age = initial_age(meta.headers, meta.request_time, meta.response_time)
    # In the fields' order: a call by keyword costs 1.5 µs more (21 names matched); test_hit_made_once checks
    # that each field gets its own value.
    return Hit(
        planned.status, planned.fields, req, meta, planned.first, planned.last, req.site, shared.router, ring,
        record, weakref.ref(shared.engine.store.purges), valid_until, viewer, fills, use, planned.body, changes,
        planned.layout, failover, fresh_until, age,
    )  # fmt: skip


def as_fetched(
    hit: Hit, method: str, asked: Headers, head: FillHead, ours: bool, status: CacheStatus, found: str
) -> Hit | None:
    """The answer to the request whose miss (`status` MISS, or EXPIRED for a stale entry) started the fill of
    `head`, from the hit that request now is, as the full handler gives it: a miss's fields for its starter alone
    (FillHead.served) and the Cache-Status of a stored miss (serving.serve_fill: the previous owner's, when a
    look-aside found it there), or a revalidation's when the head is a 304 (serving.serve_stored). `asked`: the
    request's fields; `ours`: it started the fill; `found`: what it found when decided (FillRequest.found). None
    where the full handler's answer would differ (a plan that is not the hit's, another length). A 304 brings no
    bytes: its answer is the copy stored when it comes, another fill's newer one too, as the full handler looks the
    object up again after a 304 (EdgeHandler._cached_loop) and serves what it finds as confirmed. A stored answer is
    the fill's own version, whatever another fill stored since, as the full handler reads its fill
    (serving.serve_fill): every slice is named by that version (hit.meta; Decider.restated), never another's."""
    if head.status == 304 and head.peer is None:
        meta, field = hit.meta, cache_status_header(of_304(head.worker), found=found)
    elif head.shared and head.store and head.entry_key == hit.req.entry_key and hit.meta.length == head.meta.length:
        hit = replace(hit, meta=head.meta)
        meta = answered_from(head, ours)
        detail = fill_detail(head, hit.req.spread_from is not None)
        field = cache_status_header(status, stored=True, detail=detail, found=found)
    else:
        return None
    planned = planned_hit(method, asked, meta, time.time(), field)
    if planned is None or (planned.status, planned.first, planned.last) != (hit.status, hit.first, hit.last):
        return None
    # Stale on arrival, yet just answered: its own fill is no reason to revalidate it in the background
    # (FastPath._answer); the full handler's serve_fill does not. The next request to find it stale does.
    use = Use.REVALIDATE if hit.use is Use.STALE_WHILE_REVALIDATE else hit.use
    return replace(hit, headers=planned.fields, parts=planned.layout, use=use)


def age_of(hit: Hit, now: float) -> float:
    """The age of `hit`'s entry at `now` (core.freshness.current_age(), from its initial age: never negative), which
    its answer's Age field gives in whole seconds (age_text). A remembered answer stays the answer to its head while
    it is fresh for its request (fresh_until) and only the clock moved (same_basis), its Age written anew as it is
    sent (prepared.head_at); whatever else find_hit() comes to depend on must be part of Hit.same_basis."""
    return hit.initial_age + max(0.0, now - hit.meta.response_time)


def age_text(hit: Hit, now: float) -> bytes:
    """The Age field's value of `hit`'s answer at `now`, as base_headers writes it."""
    return b"%d" % int(age_of(hit, now))


# Every field of a Hit, in order: a copy made by calling the class with them, at a fifth of dataclasses.replace's
# cost, on the path of every range cut or hop-forwarded answer.
_HIT_FIELDS = operator.attrgetter(*(f.name for f in fields(Hit)))


def copied(hit: Hit) -> Hit:
    return Hit(*_HIT_FIELDS(hit))


# The status of an answer from a stored entry, by what the entry may be used for (Hit.use).
STATUS_OF_USE = {
    Use.FRESH: CacheStatus.HIT,
    Use.STALE_OK: CacheStatus.STALE,
    Use.STALE_WHILE_REVALIDATE: CacheStatus.STALE,
    Use.REVALIDATE: CacheStatus.REVALIDATED,  # only once the origin has just confirmed it (validated)
}


def planned_hit(method: str, headers: Headers, meta: ObjectMeta, now: float, cache_status: str) -> Planned | None:
    """The answer respond.send() gives for this hit (respond.plan_answer), with the fields aiohttp's server drops
    as it frames it (encode.bodiless); None where the fast path does not answer: a 205 or 1xx, or a body of
    unknown length (a stored answer always has its length)."""
    age = current_age(meta.headers, meta.request_time, meta.response_time, now)
    planned = plan_answer(method, headers, meta, base_headers(meta.headers, int(age), cache_status))
    if planned.status == 205 or planned.status < 200:
        return None
    if planned.multi is not None:
        planned = multipart(planned, meta, new_boundary())
    fields = encode.bodiless(planned.status, planned.fields)
    length = next((v for k, v in fields if k.lower() == "content-length"), None)
    empty = method == "HEAD" or planned.status in (204, 304)
    if length is None and not empty:
        return None
    return planned._replace(fields=fields)
