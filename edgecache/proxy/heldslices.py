"""The slices an answer holds before its head is sent (decide.Prepared.slices): which slice names, and which bytes of
each, its body starts with."""

from __future__ import annotations

from edgecache.core import ranges
from edgecache.proxy.hit import Hit
from edgecache.storage.store import slice_name

# An answer holds this many of its slices (memory, open files) before its head is sent, so one gone meanwhile can
# still be fetched or the request decided again; the rest are found as the body reaches them (diskhit.stream).
HELD = 8


def held_slices(hit: Hit, size: int) -> tuple[tuple[str, int, int], ...]:
    """The body's first HELD + 1 slices at most: one more than HELD says the answer streams (diskhit.stream)."""
    first, last = hit.first, hit.last
    if last < first:
        return ()
    meta, key = hit.meta, hit.req.entry_key
    version, length = meta.slice_version, meta.slice_length
    out = []
    for index in ranges.slice_span(first, last, size)[: HELD + 1]:
        base = index * size
        end = base + length(index)  # max() and min() written out: the calls cost a new range's answer 0.3 µs
        lo, hi = first - base if first > base else 0, (last + 1 if last < end else end) - base
        out.append((slice_name(key, version, index), lo, hi))
    return tuple(out)
