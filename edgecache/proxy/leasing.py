"""The slice leases a fill holds on the shared disk (storage.leases): which it takes as it goes, and which it lets go
of when it ends. Worker processes share nothing but the disk: a slice leased there is one the others wait for
instead of fetching it again."""

from __future__ import annotations

from dataclasses import replace

from edgecache.proxy.fill import Fill, FillHead
from edgecache.proxy.fillhead import more_of
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.revalidating import drop_lease
from edgecache.storage.leases import REVALIDATING
from edgecache.storage.store import Store


async def lease_ahead(store: Store, fill: Fill, head: FillHead, reached: int, fill_slices: int, seconds: float) -> None:
    """The leases of the slices a fill is about to bring that it does not hold yet.

    A fill of the whole object leases, at each slice `reached`, it and the run of slices after it (fill_slices), as
    a ranged fill of them takes (reading._start_for): another worker's request of one, which reads the stored
    object's metadata from the head on, waits for it to land on the disk instead of fetching it again (and, with a
    soft purge between, meeting another version and cutting its answer). A ranged fill leases its run, unless its
    reader leased it before starting it: a miss's, started before any metadata named the slices, leases them once
    its head has (another worker's miss of the object waits for that head: proxy.revalidating, and reads them).
    None for one no other worker reads by slice: not shared, not stored, of unknown length, or a copy fetched only
    whole (nor a spread copy: its caller's to skip)."""
    meta = head.meta
    if not store.shared or not head.store or head.end is None or meta.whole:
        return
    last = (head.end - 1) // meta.slice_size
    if fill.last_index is not None:
        run = [i for i in range(fill.first_index, min(fill.last_index, last) + 1) if i not in fill.leases]
    else:
        upto = min(reached + fill_slices, last)
        run = list(range(max(reached, max(fill.leases, default=-1) + 1), upto + 1))
    if run:
        taken = await store.lease_run(head.entry_key, meta, run, seconds)
        fill.leases.update(store.lease_names(head.entry_key, meta.slice_version, run[:taken]))


async def let_go_all(store: Store, fill: Fill, names: list[str]) -> None:
    """Once a fill has ended (stored, failed, cut, or cancelled by a stop): the leases it holds that no write of
    its drops, its slices' (`names`: unstored) and the entry's (a whole copy's, or one whose head never came). A
    stopping worker lives on after its fills are cancelled (saving memory to disk for up to cache.save_on_stop):
    held, they kept the other workers waiting until it was gone or their time ran out, for what nobody fetched."""
    if names:
        await store.drop_leases(names)
    await drop_lease(store, fill)


def unstored(store: Store, fill: Fill) -> list[str]:
    """The slice leases taken for this fill that no write of its drops: slices it never completed (cut, failed, not
    storable) or stored under another name (a new version). Held, they kept every worker waiting on them for the
    lease's time, though nobody was fetching those slices any more."""
    if not fill.leases:
        return []
    head = fill.head
    stored: dict[int, str] = {}
    if head.done() and not head.cancelled() and head.exception() is None and head.result().store:
        stored = store.lease_names(fill.entry_key, head.result().meta.slice_version, list(fill.leases))
    slices = ((i, name) for i, name in fill.leases.items() if i != REVALIDATING)  # (revalidating.drop_lease)
    return [name for i, name in slices if not (fill.completed(i) and stored.get(i) == name)]


async def claimed(
    store: Store, fill: Fill, head: FillHead, req: FillRequest, fill_slices: int, seconds: float
) -> FillHead:
    """With other workers on the disk, a new copy's metadata is written before anyone reads the copy, and a copy
    another worker named meanwhile that the body is more of is gone on with instead (Store.claim_meta): two
    workers that missed an object at once would each fetch every slice of it for a copy of its own.

    The slices the fill brings first are leased before the metadata is written (taken, then published): leased only
    once it was (Engine._take_head), another worker's request that read it in between found them free and fetched
    them too. When another's copy is gone on with, the leases taken under this one's name (which nobody else knows)
    are let go, and _take_head leases that copy's."""
    meta = head.meta
    if not (store.shared and head.store and head.status != 304 and meta.length >= 0) or req.spread_from:
        return head
    known = store.peek_meta(head.entry_key)
    if known is not None and known.token == meta.token:
        return head
    await lease_ahead(store, fill, head, head.start // meta.slice_size, fill_slices, seconds)
    claim = await store.claim_meta(head.entry_key, meta, lambda other: more_of(other, meta))
    if claim is meta:
        return head
    if ours := [fill.leases.pop(i) for i in [i for i in fill.leases if i != REVALIDATING]]:
        await store.drop_leases(ours)
    return replace(head, meta=claim)
