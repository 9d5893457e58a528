"""Leases: one fill per slice across the worker processes of a node, which share nothing but the disk tier.

A worker about to fetch a run of slices takes their leases on the disk first; another that finds one taken waits
for the slice to land (or the lease to go: its fill failed), polling the disk as nginx's cache lock does. A
revalidation is leased the same way, by the entry it revalidates (proxy.revalidating): one conditional request
per expiry between the workers.
"""

from __future__ import annotations

import asyncio
import contextlib

from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import digest
from edgecache.errors import StorageError
from edgecache.storage.disk import lease_name
from edgecache.storage.disks import Disks
from edgecache.storage.slicenames import slice_name

# A worker holding a lease has this long to store what it guards before the others fetch it themselves: cache.lease's
# default (Leases.lease_seconds).
LEASE_SECONDS = 10.0
PEER_POLL = 0.02  # seconds between looks at the disk while another worker fetches a slice
REVALIDATING = -1  # where a fill's leases (Fill.leases, by slice index) keep its revalidation's
# How long the workers remember that an entry's origin answer was not stored (unstored_lately): each asks the origin
# for it at once meanwhile, as a single worker does. Varnish keeps its hit-for-miss object 120 s; shorter here, as
# the marks (one small expiring row each) are bounded by this time only, and one that outlived a change of the
# origin's mind costs no more than each worker's own request.
UNSTORED_SECONDS = 30.0


class Leases:
    """The Store's leases (a mixin: its `disk`)."""

    disk: Disks
    lease_seconds = LEASE_SECONDS  # cache.lease, set by server.open_node: what the request path leases for

    @staticmethod
    def lease_names(entry_key: str, version: str, indices: range | list[int]) -> dict[int, str]:
        """The lease of each slice, by index: what lease_run takes and a stored slice's write drops."""
        return {i: lease_name(slice_name(entry_key, version, i)) for i in indices}

    async def lease_run(self, entry_key: str, meta: ObjectMeta, indices: list[int], seconds: float) -> int:
        """Lease slices to fetch, in order, up to the first another worker is fetching; how many were leased."""
        names = list(self.lease_names(entry_key, meta.slice_version, indices).values())
        try:
            return await self.disk.lease(names, seconds)
        except StorageError:
            return len(indices)  # no disk to coordinate through: fetch, as a single worker would

    async def drop_leases(self, names: list[str]) -> None:
        """Let go of leases whose slices will not be stored (their fill failed): whoever waits fetches at once."""
        for name in names:
            with contextlib.suppress(StorageError):
                await self.disk.delete(name)

    @staticmethod
    def revalidation_lease(entry_key: str) -> str:
        """The lease on revalidating what is stored under `entry_key`. The value it guards is only ever a mark
        (unstored_lately), so a holder (alive: storage.disk) or a fresh mark stops another from taking it."""
        return lease_name(_unstored_mark(entry_key))

    async def unstored_lately(self, entry_key: str) -> bool:
        """Did a holder of the entry's lease learn, less than UNSTORED_SECONDS ago, that the origin's answer is not
        stored (let_go's `mark`)? Then a worker that cannot take the lease asks the origin at once: waiting for
        the one that holds it (or another) would leave it nothing to read, after a first-byte time of the origin,
        as Varnish's hit-for-miss object spares a request waiting on a busy one."""
        try:
            return (await self.disk.contains([_unstored_mark(entry_key)]))[0]
        except StorageError:
            return False

    async def lease_revalidation(self, entry_key: str, owner: str, seconds: float) -> bool:
        """Take the lease on revalidating (or first fetching) what is stored under `entry_key`, for the take
        `owner`; False while another take holds it, in another worker or in this one."""
        try:
            return bool(await self.disk.lease([self.revalidation_lease(entry_key)], seconds, owner))
        except StorageError:
            return True  # no disk to coordinate through: ask, as a single worker would (its drop fails quietly)

    async def let_go(self, lease: str, owner: str, unstored: bool = False) -> None:
        """Drop `lease` if the take `owner` still holds it: a take that outlived the lease's time never drops the
        one another took since, nor does one fill of this worker drop another's. `unstored`: the take learned that
        the origin's answer is not stored; the others hear it before the lease goes (unstored_lately)."""
        with contextlib.suppress(StorageError):
            await self.disk.let_go(lease, owner, UNSTORED_SECONDS if unstored else 0.0)

    async def renew(self, leases: list[str], owner: str, seconds: float) -> None:
        """Hold `leases` `seconds` from now, those the take `owner` holds still (storage.disk.DiskTier.renew)."""
        with contextlib.suppress(StorageError):
            await self.disk.renew(leases, owner, seconds)

    async def lease_held(self, lease: str) -> bool:
        """Is `lease` held now, by a process alive (storage.disk)? False when no disk can tell: nobody to wait for."""
        try:
            return (await self.disk.contains([lease]))[0]
        except StorageError:
            return False

    async def wait_for_peer(
        self, entry_key: str, meta: ObjectMeta, index: int, seconds: float | None, lease: str | None = None
    ) -> None:
        """Until another worker's fill of this slice is on disk, its lease is gone (it failed, or its holder died or
        received nothing for a lease: proxy.revalidating.held_on renews it as bytes come), or `seconds` (None: no
        bound but the lease's: a reader bounded by one lease of its own asked the origin for a slice its live fill was
        still bringing). `lease`: the fill's, when it is not the slice's (a copy stored only whole holds the entry's
        to its end)."""
        name = slice_name(entry_key, meta.slice_version, index)
        await self._poll([name, lease or lease_name(name)], seconds)

    async def wait_for_release(self, lease: str, seconds: float) -> None:
        """Until `lease` is let go (or its holder is gone), or `seconds`."""
        await self._poll([lease], seconds)

    async def _poll(self, names: list[str], seconds: float | None) -> None:
        """Until the first of `names` (a value) is on disk or the last (its lease) is not held, or `seconds`.

        Worker processes share nothing but the disk, so this polls it, as nginx's cache lock does."""
        with contextlib.suppress(TimeoutError, StorageError):
            async with asyncio.timeout(seconds):
                while True:
                    *on_disk, leased = await self.disk.contains(names)
                    if any(on_disk) or not leased:
                        return
                    await asyncio.sleep(PEER_POLL)


def _unstored_mark(entry_key: str) -> str:
    """The value the entry's lease guards (revalidation_lease): there while its origin answer is known unstored."""
    return "r:" + digest(entry_key)
