"""Revalidations across the worker processes of a node: one conditional request per expiry between them.

Each worker holds the metadata it serves from in memory. A copy that expired there was revalidated by every worker
on its own, though another's 304 had just refreshed the copy on the shared disk: N workers, N origin requests per
expiry. Before a worker asks, it takes the copy's revalidation lease and reads what the disk holds (in that order:
the holder writes the refreshed metadata before it lets go, so a lease taken after that finds it); while another
worker holds the lease, it waits for that one's answer, as a request joins a fill in flight in its own worker. A
lease names its process and is broken once that process is gone (storage.disk), and it expires: nobody waits on a
dead worker, nor for longer than LEASE_SECONDS on a slow origin (then it asks itself).
"""

from __future__ import annotations

import time

from edgecache import metrics
from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import revalidated_since
from edgecache.proxy.fill import Fill, FillHead, FillRegistry
from edgecache.proxy.fillrequest import FillRequest
from edgecache.storage.leases import REVALIDATING
from edgecache.storage.store import Store

# Looks at the lease and the disk: at most this many other workers' revalidations are waited for in turn (each
# failed, or refreshed the copy into one this request may not use) before this one asks the origin anyway.
TRIES = 3


async def by_another_worker(
    store: Store, fills: FillRegistry, fill: Fill, req: FillRequest, validate: ObjectMeta, seconds: float
) -> bool:
    """Did another worker's revalidation answer the revalidation `fill` was started for? Then the fill has its head,
    a 304's from the copy as that worker left it on the disk. Otherwise the fill holds the lease (Fill.leases,
    REVALIDATING) when it got it, let go once its head is stored (Engine._take_head) or it failed (_run_fill)."""
    if not store.shared or req.spread_from is not None:  # a spread copy is not on the disk
        return False
    lease = store.revalidation_lease(req.entry_key)
    for attempt in range(TRIES):
        ours = await store.lease_revalidation(req.entry_key, seconds)
        stored = await store.meta_on_disk(req.entry_key)
        now = time.time()
        if stored is not None and revalidated_since(
            stored, validate, req.headers, req.policy, req.soft_before, fill.asked_at, now
        ):
            if ours:
                await store.drop_leases([lease])
            fills.remove(fill)  # a 304 brings no bytes to join (Engine._take_head)
            fill.set_head(FillHead(304, stored, 0, 0, store=False, shared=True, entry_key=req.entry_key, worker=True))
            return True
        if ours:
            fill.leases[REVALIDATING] = lease
            return False
        if attempt == 0:
            metrics.COLLAPSED.inc()  # the request waits for another worker's origin request, as for a slice
        await store.wait_for_release(lease, seconds)
    return False
