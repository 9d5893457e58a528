"""A miss on the fast path, of an object nothing is known of or whose stored entry must be revalidated: its fill
is started here (lookup.find_cold decides which), and once the origin's head is in, the request is decided again and
is answered through the same slice reader as any hit (diskhit): as a miss that reads the fill (expired when it
replaced a stale entry), or as revalidated from the stored entry a 304 confirmed (decide.Decider.fetched), stale on
arrival or not. An origin that failed the fill or revalidation the request started or joined, with no stale entry to
stand in, gets the full handler's 502 (failed).

Whatever the head turns out to be that the fast path does not answer (a Vary that changes from answer to answer, a plan
of its own), the request goes to the full handler with the fill it started (Shared.adopted): the handler carries on
with that fill as if it had started it, so the origin is asked once either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core import churn
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import may_stand_in, never_stale
from edgecache.core.keys import digest
from edgecache.core.status import CacheStatus, miss_cause, of_fill
from edgecache.errors import OriginError, Overtaken, VersionChanged
from edgecache.proxy import fillplan, observe, passing, pastend, refuse, uncached, wholefill
from edgecache.proxy.expecting import Expected
from edgecache.proxy.fill import Adopted, Fill, FillHead, unstored
from edgecache.proxy.fillhead import RangeMismatch
from edgecache.proxy.lookup import Cold, Load, Pass
from edgecache.proxy.prepared import Prepared
from edgecache.proxy.route import Forward, Here, Refused
from edgecache.proxy.serving import peer_of

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

_ANSWERED = metrics.FAST_PATH.labels("answered")


@dataclass(slots=True)
class Started:
    """The fill a connection's cold miss started or joined, for the head at the front of its buffer."""

    head: bytes
    cold: Cold  # what find_cold decided for it
    fill: Fill
    ours: bool  # started for this request: the full handler takes it over should the fast path not answer
    evicted: bool  # this process had stored the object and dropped it
    began: float  # monotonic
    # The stale entry the fill revalidates may answer should the origin fail it (stale-if-error), judged when the
    # fill starts, as the full handler judges it before it waits for the head
    stands_in: bool = False
    origin_ms: float | None = None  # how long the head took to come
    expected: Expected | None = None  # the request, as the fill's reader until it reads (proxy.expecting)
    joined: bool = False  # it joined another request's fill before this one (_whole_instead): a collapsed wait

    def trace(self, status: CacheStatus, uncacheable: bool = False) -> observe.Trace:
        """The trace of the miss's answer written on the fast path (uncached, pastend), with the miss's cause noted
        as the full handler notes it (EdgeHandler._serve_head, _instead_of_fill)."""
        t = observe.new_trace()
        t.t0, t.site, t.status = self.began, self.cold.req.site.name, status
        t.uncacheable, t.evicted, t.failover = uncacheable, self.evicted, self.cold.failover
        t.expired, t.for_peer = self.validating is not None, self.cold.viewer is not None
        return t

    def cause(self, head: FillHead) -> str:
        """The miss's cause once its fill has its head, as observe.count() finds it for the full handler's miss
        (serving.serve_fill): ring_moved when the previous owner's cache answered the look-aside."""
        moved = peer_of(head, self.cold.req)[1]
        failover, expired = self.cold.failover, self.validating is not None
        return miss_cause(
            uncacheable=False, expired=expired, evicted=self.evicted, failover=failover, moved=moved
        ).value

    @property
    def primary(self) -> str:
        return self.cold.req.primary

    @property
    def validating(self) -> ObjectMeta | None:
        """The stale entry the fill revalidates (None: nothing was stored)."""
        return self.cold.validate

    @property
    def status(self) -> CacheStatus:
        """The Cache-Status of an answer from the fill itself (not a 304's)."""
        return of_fill(self.validating is not None)

    @property
    def placed(self) -> Here:
        """Where the request was put when its fill started (route._where: this node, standing in for an owner that
        was down, or a copy of a hot object filled from its owner): it is answered from that fill whoever owns the
        key by the time the fill's head comes, as the full handler routes a request once and then fills it."""
        return Here(standing_in=self.cold.failover, spread_from=self.cold.req.spread_from)


def start(conn: FastPath, head: bytes, admitted: bool = False) -> bool | Refused | Pass:
    """Start (or join) the fill of a miss and wait for its head off the connection's turn; its refusal or its
    pass-through (a conditional request for an object not stored), for the caller to carry out; False: not one the
    fast path fills (the caller hands the request to aiohttp, which decides it)."""
    cold = conn.server.decider.cold(head, conn.client, admitted, conn.named)
    if not isinstance(cold, Cold):
        return cold if cold is not None else False
    if conn.named and cold.req.found:  # decided again once its first fill named a Vary: it had found no variant
        cold = replace(cold, req=replace(cold.req, found=""))
    engine = conn.server.shared.engine
    fill, ours = engine.fill_for(cold.req, cold.first, cold.last, cold.validate)
    evicted = cold.validate is None and engine.ghosts.object_dropped(digest(cold.req.entry_key))
    stands_in = may_stand_in(cold.req.headers, cold.validate, cold.req.policy, time.time())
    started = Started(head, cold, fill, ours, evicted, time.monotonic(), stands_in, expected=fill.expecting.expect())
    conn.started = started
    conn.busy = True
    conn.loop.create_task(_head_in(conn, started)).add_done_callback(conn.done)
    return True


async def _head_in(conn: FastPath, started: Started) -> None:
    shared = conn.server.shared
    shared.in_flight += 1
    try:
        await asyncio.wait([started.fill.head])  # a failure is the full handler's to answer (settle)
    finally:
        shared.in_flight -= 1
    started.origin_ms = round((time.monotonic() - started.began) * 1000, 3)


def settle(
    conn: FastPath, head: bytes, decided: Prepared | Load | Forward | None
) -> Prepared | Pass | Written | Streamed | Again | Waiting | None:
    """The answer to the head whose fill has its head now: a miss from what was stored; WRITTEN, answered here
    (the origin failed this request's own fill, with nothing stored to stand in, or its 416 tells a length the
    client's range is past the end of: proxy.pastend); STREAMED (an answer not stored, sent from the fill by a
    task); its pass-through (an answer the fill brings that it may not serve); AGAIN (the answer is another
    variant's, or the revalidation met a new version: the head is decided again); WAITING (for the head of a fill of
    the whole object: proxy.wholefill); or None, and the request goes to the full handler with the fill it started
    (hand_off). A request that joined another's fill is counted as the full handler counts it when it joins."""
    started, conn.started = conn.started, None
    assert started is not None
    conn.loads = 0
    answer = _answered(conn, started, head, decided) if started.head == head else None
    if isinstance(answer, Waiting):
        return answer
    expected = started.expected
    if answer is None and started.ours:
        waited = started.origin_ms if _arrived(started.fill) is not None else None
        conn.adopted = Adopted(started.fill, started.primary, started.began, waited, started.validating, expected)
        expected = None  # the full handler's now
    elif answer is None and started.head == head:
        conn.admitted = started.primary  # let in when it joined that fill: not judged again
    elif isinstance(answer, Prepared) and answer.fill is started.fill:
        answer.expected, expected = expected, None  # until its answer reads the fill (diskhit)
    elif isinstance(answer, Streamed):
        expected = None  # until its stream starts (uncached)
    if answer is not None and (started.joined or not started.ours) and not isinstance(answer, Again):
        metrics.collapsed(None)  # its Sources, made for its body, start joined (diskhit._from_disk)
    if expected is not None:  # it reads the fill no more (a request that joined it joins again at the full handler)
        expected.release()
    return answer


def _answered(
    conn: FastPath, started: Started, head: bytes, decided: Prepared | Load | Forward | None
) -> Prepared | Pass | Written | Streamed | Again | Waiting | None:
    """settle() for the head the fill was started for: the first of these ways the full handler would answer it."""
    if (stood := _stood_in(conn, started, head)) is not None:
        return stood
    if pastend.answered(conn, started):
        return WRITTEN
    if (mismatched := _mismatched(started)) is not None:
        return mismatched
    if (again := _changed_first(conn, started)) is not None:
        return again
    # A revalidation's own, too, once no stale entry may stand in: the same 502 (EdgeHandler._head_of raises).
    # A request that joined the fill gets it as well, as the full handler's joiners do: handed off, it asked the
    # origin again, and waited for a second timeout of an origin that had just timed out.
    failure = _failure(started.fill) if not started.stands_in else None
    if failure is not None:
        failed(conn, started, failure)
        return WRITTEN
    fetched = _arrived(started.fill)
    if fetched is None:
        return None
    if wholefill.needs_whole(started.fill, fetched, started.cold.method, started.cold.req.headers, _size(conn)):
        return _whole_instead(conn, started, fetched)
    if decided is None and _just_stored(fetched):
        # Confirmed (a 304) or sent (a stored answer) just now, yet stale on arrival (max-age=0, no-cache, or the
        # request's own no-cache): answered all the same, as the full handler answers from its own fill.
        decided = conn.server.decider.validated(head, conn.client)
    got = _fetched(conn, started, decided, fetched) if isinstance(decided, Prepared) else None
    if got is None and not uncached.other_variant(started, fetched):
        # Decided again, it is no hit of this fill (a purge met meanwhile keys the object elsewhere): the fill's own
        got = _fetched(conn, started, _fill_basis(conn, started, fetched), fetched)
    if got is not None:
        return got
    if plan := uncached.planned(conn, started, fetched):
        uncached.start(conn, started, plan, failed)  # an answer not stored, streamed from the fill
        return STREAMED
    if (passed := _passed(conn, started, fetched)) is not None:
        return passed
    if fetched.status == 304:  # it confirmed a copy another worker's purge keyed elsewhere before this look-up
        return _no_change(conn, started)
    if uncached.other_variant(started, fetched):
        # Decided again with the Vary the answer named (stored or not: PrimaryRecord.named), the request is its
        # variant's miss, filled with the fields that Vary names, as the full handler looks again under that
        # variant's key. An origin whose Vary changes from answer to answer spends the request's tries.
        conn.named = fetched.meta.vary
        if started.ours and not fetched.shared:
            started.fill.abandon()  # only this request would have read it
        return _no_change(conn, started)
    return None


def _no_change(conn: FastPath, started: Started) -> Again | Pass:
    """A fill's head that leaves nothing to answer from and met no new version (a 304 of a copy gone since, another
    variant's answer): a try, as the full handler's loop counts it. Decided again (AGAIN), on a draining connection
    too (FastPath.again keeps its head processed), or, out of tries, relayed (_relay)."""
    step = tried(conn, started.head, None)
    return AGAIN if step is churn.Next.FILL else _relay(started, step)


def _relay(started: Started, step: churn.Next) -> Pass:
    """The miss relayed out of tries (core.churn's RELAY, OVERTAKEN or SPENT), as the full handler relays it."""
    return replace(_pass_of(started, CacheStatus.MISS, False, None), churned=step)


def _size(conn: FastPath) -> int:
    return conn.server.shared.engine.slice_size


def _whole_instead(conn: FastPath, started: Started, fetched: FillHead) -> Waiting:
    """The miss's fill brings a run of slices of a copy with no version, and its answer goes past it: it waits for
    the head of a fill of the whole object instead (proxy.wholefill), and is settled again once that has come."""
    engine = conn.server.shared.engine
    fill, ours = engine.fill_for(replace(started.cold.req, entry_key=fetched.entry_key), 0, None, whole=True)
    if started.expected is not None:
        started.expected.release()
    joined = started.joined or not started.ours
    again = replace(started, fill=fill, ours=ours, expected=fill.expecting.expect(), joined=joined)
    conn.started = again
    conn.busy = True
    conn.loop.create_task(_head_in(conn, again)).add_done_callback(conn.done)
    return WAITING


def _fetched(conn: FastPath, started: Started, decided: Prepared | None, fetched: FillHead) -> Prepared | None:
    """The miss's answer from the hit `decided` (decide.Decider.fetched), with the fill's cause, way and times."""
    if decided is None:
        return None
    cause, way = started.cause(fetched), "peer" if fetched.peer is not None else None
    ms, fill, validating, found = started.origin_ms or 0.0, started.fill, started.validating, started.cold.req.found
    return conn.server.decider.fetched(decided, fill, started.ours, cause, way, started.began, ms, validating, found)


def _fill_basis(conn: FastPath, started: Started, fetched: FillHead) -> Prepared | None:
    """The hit planned from the fill's head alone (proxy.fillplan), as an answer to decide the miss's from."""
    hit = fillplan.basis(conn.server.shared, started.cold, fetched)
    return conn.server.decider.planned(hit, started.cold.method, started.cold.keep_alive) if hit else None


def _arrived(fill: Fill) -> FillHead | None:
    """The fill's head, once it came (not a failure)."""
    head = fill.head
    return head.result() if head.done() and not head.cancelled() and head.exception() is None else None


def _stood_in(conn: FastPath, started: Started, head: bytes) -> Prepared | None:
    """The stale entry a failed revalidation leaves to answer, as stale-if-error lets it (RFC 5861 4): the origin
    failed the fill, or answered 5xx. The full handler's answer (EdgeHandler._head_of); None for anything else."""
    fill = started.fill
    if not fill.head.done() or fill.head.cancelled():
        return None
    exc = fill.head.exception()
    if exc is None and fill.head.result().status < 500:
        return None
    if exc is not None and _failure(fill) is None:  # not the origin's failure (a range it answered, say)
        return None
    if not started.stands_in:
        return None
    answer = conn.server.decider.stood_in(head, conn.client)
    if answer is None:
        return None
    if started.ours:
        fill.abandon()  # nobody reads what the origin sent instead
    return replace(answer, began=started.began, origin_ms=started.origin_ms)


def _just_stored(head: FillHead) -> bool:
    """Does the fill's head leave an entry the request may be answered from, fresh or not: the stored entry it
    confirmed (or, a 304 about a copy another fill replaced meanwhile, that fill's: hit.as_fetched), or the shared
    answer it stores?"""
    return head.status == 304 or (head.store and head.shared)


def _passed(conn: FastPath, started: Started, head: FillHead) -> Pass | None:
    """The pass-through the full handler makes of a miss whose fill's answer it may not serve
    (uncached.from_own_fill); None for anything else it decides."""
    fill = started.fill
    if uncached.from_own_fill(conn, started, head) != "pass":
        return None
    if started.ours:
        fill.abandon()  # only this request would have read it
    # Its cause as serving.serve_fill marks the full handler's (ring-moved after a look-aside); its bytes are the
    # origin's, which the pass-through asks (passing.carry_out), whoever answered the fill.
    passed = _pass_of(started, started.status, not head.store, started.origin_ms)
    return replace(passed, moved=peer_of(head, started.cold.req)[1], detail=unstored(head))


def _mismatched(started: Started) -> Pass | None:
    """The pass-through of a miss whose origin answered another range than the fill asked for (RangeMismatch:
    it fills nothing), as the full handler passes it through (EdgeHandler._head_of): a MISS, whose cause is the
    expired entry when it was a revalidation's; None for anything else, such as a 416 that answers the client's own
    range (pastend, which answers it first)."""
    head = started.fill.head
    if not head.done() or head.cancelled() or not isinstance(exc := head.exception(), RangeMismatch):
        return None
    if exc.unsatisfiable_for(started.cold.method, started.cold.req.headers) is not None:
        return None  # a 416 that told the length answers the client's range (pastend), unless it cannot be written
    return _pass_of(started, CacheStatus.MISS, False, None)


def _pass_of(started: Started, status: CacheStatus, uncacheable: bool, origin_ms: float | None) -> Pass:
    """The pass-through a miss becomes once its fill's head is in, timed from when the miss began."""
    cold = started.cold
    return Pass(
        cold.req, status, cold.method, cold.keep_alive, cold.viewer, started.evicted, cold.failover, uncacheable,
        started.began, origin_ms, expired=started.validating is not None,
    )  # fmt: skip


class Written:
    """settle(): the answer is written already, or by a task of the connection's: the origin failed the fill, its 416
    answers a range past the end (proxy.pastend), or the request is relayed once its revalidated entry is dropped."""


class Waiting:
    """settle(): the request waits for the head of another fill, started or joined for it (proxy.wholefill), and is
    settled again once that has come."""


WAITING = Waiting()


class Streamed:
    """settle(): the answer, not stored, is being streamed from the fill (proxy.uncached)."""


STREAMED = Streamed()


class Again:
    """settle(): the fill brought another variant than the request's, or its revalidation met a new version; the head
    is decided again, let in already."""


AGAIN = Again()


WRITTEN = Written()


def _failure(fill: Fill) -> OriginError | None:
    """The origin's failure of the fill, if that is how its head ended (an origin range the full handler passes
    through, or a version change, is not one: those are the full handler's)."""
    head = fill.head
    if not head.done() or head.cancelled() or not isinstance(exc := head.exception(), OriginError):
        return None
    return None if isinstance(exc, RangeMismatch | VersionChanged) else exc


def failed(conn: FastPath, started: Started, exc: OriginError, head_came: bool = False) -> None:
    """The answer the full handler gives when the origin fails a miss's fill and no stale entry may stand in:
    502 (504 on a timeout) with the reason, counted and logged as it counts and logs it (EdgeHandler._answer);
    `head_came`: the fill's head came first (its body failed), and the log says how long it took."""
    started.fill.abandon()  # only this request would have read it
    if started.expected is not None:
        started.expected.release()
    cold, origin_ms = started.cold, started.origin_ms if head_came else None
    if cold.validate is not None and never_stale(cold.validate.headers):  # as EdgeHandler._head_of raises it
        exc = exc.revalidating()
    refuse.origin_failed(conn, exc, cold.method, cold.req, cold.keep_alive, cold.viewer, started.began, origin_ms)


def failed_fill(conn: FastPath, p: Prepared, exc: OriginError) -> None:
    """The answer to a request whose fill (its miss's own, one it joined, or the fill of a slice its stored entry
    lacks) failed before the first byte of the answer: the full handler's (failed). Not retried: as nginx, Varnish
    and ATS, a fetch that failed is not asked again for each of its waiters."""
    if p.fill is not None and p.ours:
        p.fill.abandon()
    if p.expected is not None:
        p.expected.release()
    hit, began = p.hit, p.began if p.began is not None else time.monotonic()
    refuse.origin_failed(conn, exc, p.method, hit.req, p.keep_alive, hit.viewer, began, p.origin_ms, p.asked)


def tried(conn: FastPath, raw: bytes, exc: VersionChanged | None) -> churn.Next:
    """The answer to the head `raw` met a new version before any byte went out, or a purge here overtook its fill
    (`exc`: errors.Overtaken; None: a try that met no change, _no_change): that try counted with the head's others
    (FastPath.tries), and what the request does next, as core.churn tells the full handler (FILL: decided again;
    RELAY, OVERTAKEN, SPENT: it is relayed). On a draining connection too: a request let in before the drain is
    answered (FastPath.again keeps its head processed)."""
    tries = conn.tries[1] if conn.tries is not None and conn.tries[0] == raw else churn.Tries(tried=1)
    tries = exc.counted(tries) if exc is not None else tries
    step = tries.next()
    if step is churn.Next.FILL:
        conn.again, tries = True, tries.begun()
    conn.tries = raw, tries
    return step


async def changed(conn: FastPath, p: Prepared, raw: bytes, exc: VersionChanged) -> None:
    """A slice of the answer `p` (`raw` its head: a stored entry's, or a miss's from its fill) came back as another
    version, or a purge overtook its fill (`exc`), before any byte went out (diskhit, multipart): never mixed, and a
    try (tried: FILL). What it was answered from goes (dropped) and the head is decided again: a miss of the version
    the origin has now, or a look-up after the purge, as the full handler starts again."""
    await dropped(conn, p, exc)
    conn.buf = raw + conn.buf


async def dropped(conn: FastPath, p: Prepared, exc: VersionChanged) -> None:
    """What the answer `p`, met by a new version (`exc`), was to be made of goes, as the full handler drops it: a
    stored entry's version (EdgeHandler._changed_before_head: not for a fill a purge overtook, the purge dropped it),
    or the metadata a miss's fill stored (_changed_after_head, that fill let go if only this request reads it)."""
    store = conn.server.shared.engine.store
    if p.fill is None:
        if not isinstance(exc, Overtaken):
            await store.drop_version(p.hit.req.entry_key, p.hit.meta)
        return
    if p.ours:
        p.fill.abandon()
    if p.expected is not None:
        p.expected.release()
    await store.delete_meta(p.hit.req.entry_key)


def _changed_first(conn: FastPath, started: Started) -> Again | Pass | Written | None:
    """The fill met another version before its head (fillhead: a 304 for another version, with another Vary or
    fields that forbid storing; a 416 that tells another length than the copy stored): never mixed nor kept, and a
    try (tried). As changed(): a revalidated entry goes (off the connection's turn, or beside a relay) and the head,
    still at the front, is decided again; out of tries it is relayed (core.churn), as the full handler's loop does.
    None for anything else."""
    head, validating = started.fill.head, started.validating
    if not head.done() or head.cancelled() or not isinstance(exc := head.exception(), VersionChanged):
        return None
    step = tried(conn, started.head, exc)
    if validating is None:
        return AGAIN if step is churn.Next.FILL else _relay(started, step)
    conn.busy = True
    drop = conn.server.shared.engine.store.drop_version(started.cold.req.entry_key, validating)
    if step is churn.Next.FILL:
        conn.loop.create_task(drop).add_done_callback(conn.done)
        return AGAIN
    conn.loop.create_task(_relayed_after(conn, drop, _relay(started, step))).add_done_callback(conn.done)
    return WRITTEN


async def _relayed_after(conn: FastPath, drop: Awaitable[object], relay: Pass) -> None:
    """The revalidated entry dropped, then the request relayed (proxy.passing), on the connection's task."""
    await drop
    await passing.carry_out(conn, relay, relay.began if relay.began is not None else time.monotonic())


def adopt(conn: FastPath, p: Prepared) -> None:
    """A miss's answer that could not start (its body failed before its first byte) goes to the full handler with
    its fill, which answers as it would have (the failure), without asking the origin again. Only the fill it
    started: the full handler takes an adopted fill for the request's own, fields for its starter alone and all
    (FillHead.served); a request that joined another's was let in already, and is not judged again."""
    if p.fill is None:
        return
    if p.ours:
        began = p.began or time.monotonic()
        conn.adopted = Adopted(p.fill, p.hit.req.primary, began, p.origin_ms, p.validating, p.expected)
    else:
        conn.admitted = p.hit.req.primary
        if p.expected is not None:
            p.expected.release()


def drop(conn: FastPath) -> None:
    """The client left: a fill only it would have read is let go (a private one would hold its origin
    connection at its bound)."""
    started, conn.started = conn.started, None
    if started is not None and started.ours:
        started.fill.abandon()
    if started is not None and started.expected is not None:
        started.expected.release()
    adopted, conn.adopted = conn.adopted, None
    if adopted is not None:
        adopted.let_go()
