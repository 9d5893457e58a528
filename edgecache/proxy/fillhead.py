"""A fill's response head judged: the copy its body belongs to, where it is stored, and who may share it.

The status and fields of the origin's (or a peer's) answer in, a FillHead out. What this process already holds
for the object (the store's records and metadata, looked at without waiting) decides whether the body is more
of a stored copy and whether an invalidation overtook the fill.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import replace
from email.utils import formatdate

from edgecache import metrics
from edgecache.core import entry, objectsize, ranges
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import (
    Policy,
    StoreDecision,
    Use,
    freshness_of,
    merge_304,
    selects,
    storable,
    strip_for_storage,
    usable,
)
from edgecache.core.headers import Headers, get_first
from edgecache.core.keys import PrimaryRecord, entry_key, variant
from edgecache.core.lookaside import asks_of_age
from edgecache.errors import OriginError, VersionChanged
from edgecache.proxy.fill import Fill, FillHead
from edgecache.proxy.fillrequest import FillRequest
from edgecache.storage.store import Store


class RangeMismatch(OriginError):
    """The origin's 206 is not for the range we asked, or a 416 says the object is shorter than it (empty, or
    changed): it cannot fill slices, but the client's own request is passed through and answered. A 416's
    `length` (its `bytes */N`, when it has no Vary) and `fields` let a client range it leaves unsatisfiable be
    answered 416 without asking the origin again (serving.past_the_end)."""

    def __init__(self, reason: str, length: int | None = None, fields: Headers = ()) -> None:
        super().__init__(reason, retryable=False)
        self.length = length
        self.fields = fields

    def unsatisfiable_for(self, method: str, headers: Headers) -> int | None:
        """The object's length this 416 told, when it leaves the client's own Range (with no condition of its own,
        which the fill was asked without) unsatisfiable too: the client's answer is that 416, no second request."""
        if self.length is None or method not in ("GET", "HEAD"):
            return None
        if any(get_first(headers, name) is not None for name in _CONDITIONS):
            return None
        rng = ranges.resolve(get_first(headers, "range"), self.length)
        return self.length if isinstance(rng, ranges.Unsatisfiable) else None


# The reason a storable answer is not stored: an invalidation or purge overtook its fill (Engine._fill).
OVERTAKEN = "invalidated"
_CONDITIONS = ("if-range", "if-match", "if-unmodified-since", "if-none-match", "if-modified-since")


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


def new_token() -> str:
    """A token no copy of any object has had: a new copy's, whose slices are never read for an earlier one."""
    return _unique()


def _unique() -> str:
    return f"{_unique_prefix}{next(_unique_counter):x}"


def rejoined(store: Store, head: FillHead) -> FillHead:
    """The head of a fill that waited for its turn (proxy.fillmemory) after judge_head named its copy: another fill
    of the object may have named one meanwhile. A body that is more of that copy joins it, as judge_head would have
    joined it; kept as its own copy, its metadata replaced the other's, whose slices no stored copy named and were
    fetched again (with a shared pool smaller than a run, fills of one object took turns and did so)."""
    meta, existing = head.meta, store.peek_meta(head.entry_key)
    if head.status == 304 or existing is None or existing.slice_version == meta.slice_version:
        return head
    if not more_of(existing, meta):
        return head
    return replace(head, meta=replace(meta, whole=meta.whole or existing.whole, token=existing.token))


def more_of(existing: ObjectMeta, meta: ObjectMeta) -> bool:
    """Is the body `meta` describes more of the copy `existing` (judge_head's rule, for a copy named meanwhile)?"""
    return _same_copy(existing, meta.version, meta.status, meta.length, meta.headers)


def within_run(fill: Fill, head: FillHead, slice_size: int) -> bool:
    """Whether the body is within the run of slices the fill asked for (a 200 of unknown length never is)."""
    assert fill.last_index is not None
    first, end = fill.first_index * slice_size, (fill.last_index + 1) * slice_size
    return head.start >= first and head.end is not None and head.end <= end


def judge_head(
    store: Store,
    slice_size: int,
    status: int,
    headers: Headers,
    asked: ranges.ByteRange | None,
    req: FillRequest,
    times: tuple[float, float],
    existing: ObjectMeta | None,
    limit: int,
) -> FillHead:
    """Judge the origin's response head; `existing` is what is stored under the key it belongs to; `limit`: the
    largest copy stored whole (core.objectsize)."""
    request_time, response_time = times
    j = entry.judge(status, headers, asked)
    served, stored = _fields(status, headers, req.policy, response_time)
    if isinstance(j, entry.Refused):
        told = _told_length(status, headers)
        _raise_if_another_length(store, req, existing, told)
        if status in (206, 416):
            # The client's own Range is judged by a length only when no field of its own could name another variant.
            told = None if entry.vary_names(headers) else told
            raise RangeMismatch(f"origin response refused: {j.reason}", told, served)
        raise OriginError(f"origin response refused: {j.reason}", retryable=False)
    vary = entry.vary_names(headers) if status != 304 else (existing.vary if existing else ())
    primary = req.record_key
    key = entry_key(primary, PrimaryRecord(req.generation, vary), req.headers, req.scope)
    validated = existing  # a 304's: the copy its request asked about (Engine._fill)
    # Concurrent cold fills of one object: the first head to arrive names the copy, the others join it.
    existing = store.peek_meta(key) or existing
    alive = _alive(store, req, primary, request_time, existing)
    if isinstance(j, entry.NotModified):
        return _of_304(validated, existing, stored, times, req)
    length, start, end, body_status = _body(j, status)
    version, whole, token = _copy(j, headers, stored, length, body_status, asked, existing)
    meta = ObjectMeta(
        status=body_status,
        headers=entry.shared_fields(stored),
        length=length,
        version=version,
        whole=whole,
        request_time=request_time,
        response_time=response_time,
        slice_size=slice_size,
        vary=vary,
        token=token,
    )
    decision = storable("GET", body_status, req.headers, headers, req.policy)
    # Every stored body goes to the store a slice at a time as it arrives, whatever its status and whether its
    # length is known; the metadata of one of unknown length follows once it has ended whole (Engine._pump). An
    # answer that is not stored, one an invalidation overtook included, is not shared either: its one reader
    # paces it. Save one too large to store, whole from its first byte (not a 206): the requests that joined its
    # fill before its head came stream it with the one that started it, paced by the slowest (serving.from_fill).
    keep, shared, reason = _kept(decision, alive, status, meta, limit)
    if not decision.store:
        meta = replace(meta, headers=served)  # never stored: its own client gets every field
    return FillHead(body_status, meta, start, end, keep, shared, reason, key, variant(vary, req.headers), served)


def _kept(decision: StoreDecision, alive: bool, status: int, meta: ObjectMeta, limit: int) -> tuple[bool, bool, str]:
    """Whether an answer is stored, whether the requests that joined its fill share it, and why it is not stored. A
    copy (`meta`: its length, and whether it is taken only whole) over the largest stored whole (`limit`) is counted
    (edgecache_too_large_total), once: its fill's head is judged once."""
    if not decision.store:
        return False, False, decision.reason
    if not alive:
        return False, False, OVERTAKEN
    if not objectsize.fits(meta.length, limit, whole=meta.whole):
        metrics.TOO_LARGE.inc()
        return False, status != 206, objectsize.TOO_LARGE
    return True, True, decision.reason


def _raise_if_another_length(store: Store, req: FillRequest, existing: ObjectMeta | None, told: int | None) -> None:
    """VersionChanged when a 416 tells another length than a stored copy's: a new version, which the request fetches
    again as a miss. Passed through, a revalidation met the same 416 for every request, and the copy was never
    replaced. The copies: the one its Vary names for the fields this fill sent (`existing`, Engine._fill), and the
    one the fill was asked for, under the request's key: a 416 whose Vary changed (on or off) names another key,
    with no copy, and was taken for an origin whose ranges disagree (reading._disagreed)."""
    known = [m for m in (existing, store.peek_meta(req.entry_key)) if m is not None and m.length >= 0]
    if told is not None and any(m.length != told for m in known):
        raise VersionChanged(f"origin's 416 tells a length of {told}, the stored copy's is {known[0].length}")


def _told_length(status: int, headers: Headers) -> int | None:
    """The length of the variant a fill asked for that a 416 to its range tells (`Content-Range: bytes */N`); none
    from a 206."""
    told = ranges.parse_content_range(get_first(headers, "content-range")) if status == 416 else None
    if told is None or told.first is not None:
        return None
    return told.length


def _alive(store: Store, req: FillRequest, primary: str, request_time: float, existing: ObjectMeta | None) -> bool:
    """Whether what the fill brings may be stored: not when it started before an invalidation or purge, nor when
    it was asked before a soft purge and a copy asked after it is stored (the purged bytes would hide the newer)."""
    current = store.peek_record(primary)
    if current is not None and current.generation != req.generation:
        return False
    soft = store.purged(req.site.name, req.host_key, req.path, current)[1]
    return not (request_time < soft and existing is not None and existing.request_time >= soft)


def _fields(status: int, headers: Headers, policy: Policy, response_time: float) -> tuple[Headers, Headers]:
    """The fields the client that asked gets, and those anyone else may ever get."""
    served = entry.stored_headers(headers, status)
    stored = strip_for_storage(served, policy)
    if get_first(stored, "date") is None:  # RFC 9110 6.6.1: a recipient with a clock adds the Date it lacks
        stored += (("Date", formatdate(response_time, usegmt=True)),)
    return served, stored


def _of_304(
    validated: ObjectMeta | None,
    existing: ObjectMeta | None,
    stored: Headers,
    times: tuple[float, float],
    req: FillRequest,
) -> FillHead:
    """RFC 9111 4.3.4: a 304 updates the copy it validated (`validated`, else what is stored: `existing`)."""
    asked_about = validated if validated is not None else existing
    if asked_about is not None and not selects(asked_about.headers, stored):
        # Its validator is not that copy's: it updates nothing (merged, the old bytes would go out under the new
        # validator). The copy is dropped and the object fetched again (EdgeHandler._cached_loop).
        raise VersionChanged(f"origin answered 304 for another version ({get_first(stored, 'etag')})")
    # If another version was stored meanwhile (a fill that came back first), the 304 is about the copy asked about,
    # for this fill's readers only: merged into the stored copy, it gave the new bytes the old validator.
    if validated is not None and existing is not None and existing.version != validated.version:
        return _not_modified(validated, stored, times, req.entry_key, kept=False)
    head = _not_modified(existing, stored, times, req.entry_key)
    if entry.vary_names(head.meta.headers) != head.meta.vary:
        # Another Vary: the copy was selected by the fields the old one named, and would claim the new one's.
        raise VersionChanged(f"origin answered 304 with another Vary ({get_first(stored, 'vary')})")
    decision = storable("GET", head.meta.status, req.headers, head.meta.headers, req.policy)
    if not decision.store:
        # Its fields make the updated copy one a shared cache must not keep (no-store, private, Vary: *): kept, it
        # was a hit for everyone. The copy is dropped and the object fetched again, as for another validator.
        raise VersionChanged(f"origin answered 304 with fields that forbid storing ({decision.reason})")
    return head


def _not_modified(
    existing: ObjectMeta | None, stored: Headers, times: tuple[float, float], key: str, kept: bool = True
) -> FillHead:
    if existing is None:
        raise OriginError("origin answered 304 to an unconditional request", retryable=False)
    # RFC 9111 4.3.4: the stored response is updated with the 304's fields and becomes fresh again.
    merged = replace(
        existing,
        headers=merge_304(existing.headers, stored),
        request_time=times[0],
        response_time=times[1],
    )
    return FillHead(304, merged, 0, 0, store=False, shared=kept, entry_key=key, kept=kept)


def _body(j: entry.Partial | entry.Whole | entry.Other, status: int) -> tuple[int, int, int | None, int]:
    """The body's object length (-1: unknown), its first offset and the one after it, and its stored status."""
    if isinstance(j, entry.Partial):
        return j.length, j.first, j.last + 1, 200
    return (j.length if j.length is not None else -1), 0, j.length, status


def _copy(
    j: entry.Partial | entry.Whole | entry.Other,
    headers: Headers,
    stored: Headers,
    length: int,
    body_status: int,
    asked: ranges.ByteRange | None,
    existing: ObjectMeta | None,
) -> tuple[str, bool, str]:
    """The version, the fill-whole mark and the token of the copy the body belongs to (`stored`: the fields kept
    of the answer, with its Date)."""
    version = entry.version_of(headers, length if length >= 0 else None)
    # A 200 to a Range request says the origin ignores Range: fill such objects in one request from now on.
    whole = version is None or isinstance(j, entry.Other) or (isinstance(j, entry.Whole) and asked is not None)
    if version is None:
        version = "u:" + _unique()
    # The same validator and another length is another copy: an origin that reused a strong ETag for new bytes of
    # another size (a Last-Modified version holds the length already), or of another strong Last-Modified. Its
    # slices are never combined.
    if existing is not None and _same_copy(existing, version, body_status, length, stored):
        return version, whole or existing.whole, existing.token  # more of the same copy
    return version, whole, _unique()


def _same_copy(existing: ObjectMeta, version: str, status: int, length: int, stored: Headers) -> bool:
    """Is a body of this version, status, length and stored fields more of the copy `existing`?"""
    return (
        (existing.version, existing.status) == (version, status)
        and (length < 0 or existing.length < 0 or existing.length == length)
        and entry.same_last_modified(existing.headers, stored)
    )


def answers(fill: Fill, req: FillRequest) -> bool:
    """May a request that comes now join `fill`: asked of the origin before its answer came (collapsed), or an
    answer already in that this request may use as it is. One that must be revalidated for it (no-cache,
    max-age=0, the request's own no-cache) came before the request and answers nothing about it. A fill a peer's
    cache may still answer is judged for the request that started it: one asking something of the answer's age
    itself (lookaside.asks_of_age) fills for itself instead, judged on its own, the origin asked if need be."""
    if not fill.head.done():
        return not (fill.peer_first and asks_of_age(req.headers))
    if fill.head.cancelled() or fill.head.exception() is not None:
        return True
    meta = fill.head.result().meta
    return usable(req.headers, meta.headers, freshness_of(meta, time.time(), req.policy), req.policy) is Use.FRESH


def replaces(existing: ObjectMeta | None, validated: ObjectMeta | None, asked: str, head: FillHead) -> bool:
    """Is the copy a fill's head stores other bytes than the copy stored before it (a new version a revalidation or a
    no-cache request brought), or stored under another entry key than the one it revalidated (`validated`, under
    `asked`: the new answer Varies otherwise)? Other workers holding the old one in memory, or the record that leads
    to it, would serve it until it expired."""
    if not (head.store and head.status != 304 and head.meta.length >= 0):
        return False
    moved = validated is not None and head.entry_key != asked
    return moved or (existing is not None and not entry.same_bytes(existing, head.meta))


def cut_whole(fill: Fill) -> ObjectMeta | None:
    """The copy a fill that failed stored of an object fetched only whole (no validator: nothing proves two fetches the
    same version), left without the rest of its body. No later fetch can complete it, each being another version:
    kept, every request after it cost the origin 2 to 5 fetches (each met as a new version, and retried)."""
    head = fill.head
    if not head.done() or head.cancelled() or head.exception() is not None:
        return None
    brought = head.result()
    return brought.meta if brought.store and brought.meta.whole else None
