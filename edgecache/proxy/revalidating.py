"""One origin request per answer between the worker processes of a node: a revalidation, or a miss of an object
nothing is stored of.

Each worker holds the metadata it serves from in memory. A copy that expired there was revalidated by every worker
on its own, though another's 304 had just refreshed the copy on the shared disk: N workers, N origin requests per
expiry. A cold object missed by each worker within one first-byte time of another was fetched by each, as nginx's
proxy_cache_lock exists to prevent: a viral video's first seconds cost the origin's link N times.

Before a worker asks, it takes the entry's lease (a revalidation's or a miss's: one origin head at a time per entry
key) and reads what the disk holds (in that order: the holder writes the metadata before it lets go, so a lease
taken after that finds it); while another worker holds the lease, it waits for that one's answer, as a request
joins a fill in flight in its own worker, then reads the stored copy (a miss's slices, which the holder leased
before it let go: proxy.leasing, are read as they land). A lease names its process and is broken once that process
is gone (storage.disk), and it expires: nobody waits on a dead worker, nor for longer than LEASE_SECONDS on a slow
origin (then it asks itself). The holder lets go once its head is stored or judged not storable (Engine._take_head):
then a miss's waiter finds nothing stored and asks the origin itself, at once; told so by a mark the holder leaves
(let_go_at_head), it does not take the lease for its own request, and no worker waits on one while the mark is
fresh. A copy stored only whole is held until its body is stored (holds_to_the_end): its waiter reads it as it lands
(whole_by_another_worker), or asks once it was cut or purged (let_go_if_purged).
"""

from __future__ import annotations

import time

from edgecache import metrics
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import BY_FIELDS, answered_since, revalidated_since
from edgecache.core.status import CacheStatus
from edgecache.errors import OriginError, VersionChanged
from edgecache.proxy.fill import RENEW_SECONDS, Fill, FillHead
from edgecache.proxy.fillregistry import FillRegistry
from edgecache.proxy.fillrequest import FillRequest
from edgecache.storage.leases import REVALIDATING
from edgecache.storage.store import Store

# At most this many other workers' revalidations are waited for in turn (each failed, or refreshed the copy into
# one this request may not use) before this one asks the origin anyway. A miss waits for one: nothing stored
# after it means the answer was not storable (or failed), and each waiter then asks the origin.
TRIES = 3


async def by_another_worker(
    store: Store,
    fills: FillRegistry,
    fill: Fill,
    req: FillRequest,
    validate: ObjectMeta | None,
) -> bool:
    """Did another worker's origin request answer the one `fill` was started for (the revalidation of `validate`,
    or a miss when None)? Then the fill has its head, a 304's from the copy as that worker left it on the disk
    (FillHead.worker: this request's answer is told as that origin request's joiners are). Otherwise the fill holds
    the lease (Fill.leases, REVALIDATING) when it got it, let go once its head is stored (Engine._take_head) or it
    failed (_run_fill)."""
    if not store.shared or req.spread_from is not None:  # a spread copy is not on the disk
        return False
    seconds = store.lease_seconds  # cache.lease
    lease = store.revalidation_lease(req.entry_key)
    waits = TRIES if validate is not None else 1
    for attempt in range(waits + 1):
        ours = await store.lease_revalidation(req.entry_key, _owner(fill), seconds)
        stored = await store.meta_on_disk(req.entry_key)
        if stored is not None and await _answers(store, stored, validate, req, fill, not ours):
            if ours:
                await store.let_go(lease, _owner(fill))
            fills.remove(fill)  # a 304 brings no bytes to join (Engine._take_head)
            fill.set_head(
                FillHead(304, stored, 0, 0, store=False, shared=True, entry_key=req.entry_key, worker=_told(validate))
            )
            return True
        if ours:
            fill.leases[REVALIDATING] = lease
            return False
        if validate is None and _heading_here(fills, fill):
            return False
        if await store.unstored_lately(req.entry_key):  # nothing to read after the wait: ask now, as alone
            return False
        if attempt == waits:
            return False
        if attempt == 0:
            metrics.collapsed(metrics.SOURCES.get())  # the request waits for another worker's origin request
        await store.wait_for_release(lease, seconds)
    return False


async def drop_lease(store: Store, fill: Fill, unstored: bool = False) -> None:
    """Let go of the lease `fill` took (by_another_worker), if it took one and holds it still: the others waiting
    on it read the disk now. `unstored`: its answer is not stored; they hear so, and ask the origin at once."""
    if (lease := fill.leases.pop(REVALIDATING, None)) is not None:
        await store.let_go(lease, _owner(fill), unstored)


async def let_go_at_head(store: Store, fill: Fill, head: FillHead) -> None:
    """The entry's lease once the fill's head is stored or judged (Engine._take_head), unless it holds to the end.

    An answer its own fields forbid storing leaves a mark where every worker sees it (Leases.unstored_lately): the
    ones waiting ask the origin at once, and none took the lease after it for a request of its own, for which the
    next worker's miss waited in turn, a first-byte time each. Not for an error, nor one an invalidation overtook:
    those say nothing of the next answer, and an origin in trouble is spared most by one request at a time."""
    if not holds_to_the_end(head):
        unstored = not head.store and head.status < 500 and head.status != 304 and head.reason in BY_FIELDS
        await drop_lease(store, fill, unstored)


async def end_unkept(store: Store, fill: Fill, entry_key: str, meta: ObjectMeta) -> None:
    """A background revalidation that keeps nothing (a 304 for another version or forbidding storing, an answer
    that may not be stored) ends the stale entry: served for the rest of its window, it was no longer the
    origin's answer, and each request sent the origin another revalidation. An origin that failed leaves it."""
    try:
        head = await fill.heard()
    except VersionChanged:
        head = None
    except OriginError:
        return
    if head is None or not ((head.status == 304 and head.kept) or head.store):
        await store.drop_version(entry_key, meta)


async def not_purged(store: Store, primary: str, req: FillRequest) -> bool:
    """Is the record the fill was asked under still the object's? A purge another worker applied since the head
    was judged (the fill waited for its share of fill memory, say) is caught up on first: the fill's record and
    metadata are neither remembered nor written over the purge's (Engine._take_head, Engine._store_length)."""
    if store.stale():
        await store.catch_up()
    return (await store.get_record(primary)).generation == req.generation


async def let_go_if_purged(store: Store, fill: Fill, head: FillHead, req: FillRequest) -> None:
    """A fill that holds the entry's lease past its head (a copy stored only whole: holds_to_the_end) lets go once
    its object was purged, here or in another worker (looked at from the head on, at each slice it reaches). The
    worker waiting on it would find no copy it may answer from at the body's end, and ask the origin then: it
    waited out the body for nothing."""
    if REVALIDATING not in fill.leases or not holds_to_the_end(head):  # (the others let go at the head)
        return
    if not await not_purged(store, req.record_key, req):
        await drop_lease(store, fill)


async def being_written(store: Store, req: FillRequest, meta: ObjectMeta) -> bool:
    """Is the copy `meta`, stored only whole, being written by another worker's fill? Its fill holds the entry's
    lease until its body is stored (holds_to_the_end), and its metadata is on the disk from its head on
    (leasing.claimed). Then the slices it lacks are on their way: read as they land (whole_by_another_worker), on
    either path (serving._completed), not taken for a copy that will never be whole.

    The lease alone names no copy: one held by another worker's fill of a newer copy (its metadata on the disk in
    place of `meta`'s) was taken for this copy's writer, and a reader of `meta` waited for slices nobody was
    fetching any more; the full handler served `meta` partly instead of fetching it whole before its head, and cut
    the answer at the slice it lacked. A holder that has no head yet (a revalidation, a miss) still passes for the
    writer until its head: one first-byte time of its origin, at most LEASE_SECONDS."""
    if not store.shared or req.spread_from is not None:  # a spread copy is not on the disk
        return False
    if not await store.lease_held(store.revalidation_lease(req.entry_key)):
        return False
    on_disk = await store.meta_on_disk(req.entry_key)
    return on_disk is not None and on_disk.token == meta.token


async def whole_by_another_worker(store: Store, req: FillRequest, meta: ObjectMeta, index: int) -> bool:
    """Did another worker's fill of the copy `meta`, stored only whole, store slice `index` while this waited?

    Such a copy's metadata is on the disk from its head on (leasing.claimed) while its body is still written, and
    its fill holds the entry's lease to the end (holds_to_the_end). A reader in another worker that found a slice
    missing fetched the whole object again (a second origin request, a copy of its own); it waits for the slice to
    land now, then reads it on the disk. For this slice, not the whole body: the reader goes on right behind the
    writer.

    Bounded by the writer's progress: its lease lasts LEASE_SECONDS past the last bytes it received (held_on), and
    breaks when its process dies. A round of LEASE_SECONDS ends with the slice still missing only when the writer
    renewed the lease meanwhile (an origin slower than a slice a lease): the reader waits on while it is still this
    copy's writer. It fetched a copy of its own there before, and its answer, begun from this one, was cut."""
    lease = store.revalidation_lease(req.entry_key)
    while await being_written(store, req, meta):
        metrics.collapsed(metrics.SOURCES.get())  # the request waits for another worker's origin request: once
        await store.wait_for_peer(req.entry_key, meta, index, store.lease_seconds, lease)
        if not await store.missing(req.entry_key, meta, [index]):
            return True
    # Not (or no longer) being written: the writer may have stored the slice and ended since the reader looked.
    return not await store.missing(req.entry_key, meta, [index])


def _told(validate: ObjectMeta | None) -> CacheStatus:
    """How an answer from another worker's origin request is told: as a request that joined it in that worker."""
    return CacheStatus.REVALIDATED if validate is not None else CacheStatus.MISS


def _owner(fill: Fill) -> str:
    """The token of a fill's take of the lease: unique among the fills alive in this process (each takes it once),
    and held with the process's pid (storage.disk._holder). Two fills of one worker no longer share a take, so the
    first to end drops its own only; a fill slower than the lease's time finds another's there, and leaves it."""
    return f"{id(fill):x}"


def _heading_here(fills: FillRegistry, fill: Fill) -> bool:
    """Is another fill of this worker still waiting for the head of the object `fill`, a miss, was started for? It
    holds the entry's lease (or waits for another worker's head), and brings none of this fill's slices: a request
    for them would have joined it (Engine.fill_for). A seek waiting for that head gains nothing from it and pays a
    whole first-byte time of the origin; it asks for its slices at once (without the lease), as a single worker
    does."""
    return any(other is not fill and not other.head.done() for other in fills.of(fill.entry_key))


async def held_on(store: Store, fill: Fill) -> None:
    """A fill received bytes, or stored a slice: the leases it holds on what it is still bringing, the entry's to its
    end (holds_to_the_end) and those of the slices it has not completed, are held LEASE_SECONDS from now, at most once
    every RENEW_SECONDS (a disk write each, not one a chunk).

    A slice's lease, taken once for LEASE_SECONDS, expired under an origin slower than that run of slices a lease,
    though its fill was alive and receiving them: the reader in another worker that waited for the slice then leased
    it and asked the origin too (tests/e2e/test_worker_slice_slow: 2 origin requests).

    Taken once for LEASE_SECONDS, it expired under a body that took longer to come, and a reader in another worker
    (whole_by_another_worker) took that for the fill's end: it fetched a copy of its own and cut its answer midway,
    another copy's bytes being no part of it (tests/e2e/test_worker_whole_slow). Renewed only per slice stored, it
    still expired under an origin slower than a slice a lease (1 MiB in 10 s: 100 KiB/s). Still bounded: the lease
    goes LEASE_SECONDS after the last bytes came, and with its holder's process."""
    now = time.monotonic()
    if not fill.leases or now < fill.renew_at:
        return
    fill.renew_at = now + RENEW_SECONDS
    if (lease := fill.leases.get(REVALIDATING)) is not None:
        await store.renew([lease], _owner(fill), store.lease_seconds)
    if slices := [name for i, name in fill.leases.items() if i != REVALIDATING and not fill.completed(i)]:
        await store.renew(slices, "", store.lease_seconds)  # taken by the process (Leases.lease_run): no owner


def holds_to_the_end(head: FillHead) -> bool:
    """Does a fill whose head is `head` keep the entry's lease until its body is stored (Engine._let_go_stored),
    not only until its head is? A copy stored only whole (no validator, or not a 200: a cached 404, a 301) is taken
    by another worker only once complete, or while its writer holds the lease (_complete): let go at the head, the
    waiter found it still being written and asked the origin too, after a whole first-byte time of waiting.
    nginx's proxy_cache_lock waits for the whole response likewise. A fill that fails or is cut lets go at once
    (Engine._run_fill)."""
    return head.store and head.meta.whole and head.status != 304


async def _answers(
    store: Store, stored: ObjectMeta, validate: ObjectMeta | None, req: FillRequest, fill: Fill, others: bool
) -> bool:
    """May what the disk holds answer the fill's request (a copy stored only whole, once complete or while another
    take of the lease writes it: _complete)? `others`: the lease is another's, not this fill's."""
    now = time.time()
    if validate is not None:
        answers = revalidated_since(stored, validate, req.headers, req.policy, req.soft_before, fill.asked_at, now)
    else:
        answers = answered_since(stored, req.headers, req.policy, req.soft_before, fill.asked_at, now)
    return answers and await _complete(store, stored, req, fill, others)


async def _complete(store: Store, stored: ObjectMeta, req: FillRequest, fill: Fill, others: bool) -> bool:
    """Is every slice of a copy stored only whole that the fill was started for in the store (a range's: its
    slices; the copy's first fill may have been a range's, which holds those alone, and a later range within them is
    answered from it), or, for a fill of the whole object, is another take of the lease (`others`) still writing it
    (being_written), a copy answered since the fill asked? Then its slices are read as they land
    (whole_by_another_worker), as by a request that came after its head. Not taken then, the copy was waited for
    one lease at most (the writer holds the lease to its body's end), and a body slower than that was fetched again
    (tests/e2e/test_worker_whole_slow); and a range missed by two workers at once was fetched by each
    (tests/e2e/test_worker_range_unversioned). A copy fetched by slice is taken at once: its missing slices are
    leased by the fill bringing them (proxy.leasing)."""
    if not stored.whole:
        return True
    if stored.length < 0:
        return False
    whole = fill.last_index is None  # a range's writer brings its own slices alone (test_worker_range_elsewhere)
    if others and whole and stored.response_time >= fill.asked_at and await being_written(store, req, stored):
        return True  # (answered after this fill asked: the holder's own answer, not an older copy it replaces)
    last = stored.slice_count - 1 if fill.last_index is None else min(fill.last_index, stored.slice_count - 1)
    return not await store.missing(req.entry_key, stored, list(range(fill.first_index, last + 1)))
