"""A worker's resident memory: glibc's free memory given back, and the memory tier shrunk while RSS is over
cache.memory + cache.memory_headroom (the tier is what can give way; fills have their own bound, proxy.fillmemory)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from edgecache.storage.memory import LIMIT_FLOOR, next_entries, next_limit, rss_slack
from edgecache.storage.store import Store

RSS_SECONDS = 5.0


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
