"""A worker's resident memory: glibc's free memory given back, and the memory tier shrunk while RSS is over
cache.memory + cache.memory_headroom (the tier is what can give way; fills have their own bound, proxy.fillmemory)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from edgecache.storage.memory import LIMIT_FLOOR, next_entries, next_limit, rss_slack
from edgecache.storage.store import Store

RSS_SECONDS = 5.0


def heap_slices(slice_size: int) -> None:
    """Have glibc serve blocks of a slice's size from its heap from the start, as it does once it has freed one.

    glibc maps each block past its mmap threshold (128 KiB at first) on its own, and gives it back to the kernel
    when freed; freeing such a block raises the threshold to its size (its dynamic threshold), and from then on
    blocks that size come from the heap, where freed ones are used again. A memory tier that evicts frees slices
    early, and its fills reuse memory. One that never fills up (3 GiB against the bench's 768 MiB) never did: each
    origin chunk (up to 256 KiB) was mapped, touched and unmapped, on top of the slice it was joined into. On a VM
    every fresh page touched is a fault to the host: W4 at 3 GiB took 370-410 faults a MiB filled against 6-20 at
    256 MiB (bench 0.58x nginx against 1.07); with the threshold raised from the start, 256-260 (the slice's
    own pages). One block mapped and freed does it, with no mallopt(), which would turn the dynamic threshold off.
    """
    block = bytearray(slice_size + 64 * 1024)  # a slice's bytes and their object's header, rounded up
    del block


async def bound_rss(store: Store, headroom: int) -> None:
    """Keep this worker's RSS within the memory tier's budget plus `headroom` (cache.memory_headroom; 0: only
    trim, never shrink the tier).

    Every few seconds: read RSS, give memory glibc holds free back to the kernel (malloc_trim, in a thread:
    slices come and go in 1 MiB blocks between small long-lived objects, and glibc keeps the freed blocks in its
    heaps), then move the tier's limit by what RSS was over (or comfortably under) budget + headroom. With the
    tier at its floor, the metadata kept at hand gives way next, and it comes back last (next_entries).
    """
    tier = store.memory
    from edgecache import metrics

    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    loop = asyncio.get_running_loop()
    page = os.sysconf("SC_PAGE_SIZE")
    rss_limit = tier.budget_bytes + headroom
    most, floor = store.meta_entries, int(tier.budget_bytes * LIMIT_FLOOR)

    def rss() -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * page

    def measure_and_trim() -> int:
        # RSS as it was before the trim: between two trims the process reaches about that much again (freed
        # slices pile up in glibc's heaps), and that is what top, a cgroup and the soak see.
        before = rss()
        trim(0)
        return before

    while True:
        await asyncio.sleep(RSS_SECONDS)
        reached = await loop.run_in_executor(None, measure_and_trim)
        if headroom > 0:
            was_at_floor = tier.limit <= floor  # before this round: one reading must not cut both
            tier.set_limit(next_limit(tier.budget_bytes, tier.limit, reached, rss_limit))
            state = (was_at_floor, tier.limit >= tier.budget_bytes)
            slack = rss_slack(tier.budget_bytes)
            store.set_meta_entries(next_entries(store.meta_entries, most, reached, rss_limit, slack, state))
        metrics.MEMORY_LIMIT.set(tier.limit)


def fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own arena; the disk threads' 1 MiB slices then leave freed
    memory scattered over many arenas that are never given back. Two arenas keep RSS close to the budget."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
