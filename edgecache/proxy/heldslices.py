"""The slices an answer holds before its head is sent (prepared.Prepared.slices): which slice names, and which bytes of
each, its body starts with."""

from __future__ import annotations

from edgecache.core.entry import ObjectMeta
from edgecache.proxy.hit import Hit
from edgecache.storage.slicenames import slice_prefix

# An answer holds this many of its slices (memory, open files) before its head is sent, so one gone meanwhile can
# still be fetched or the request decided again; the rest are found as the body reaches them (diskhit.stream).
HELD = 8


def held_slices(hit: Hit, size: int) -> tuple[tuple[str, int, int], ...]:
    """The body's first HELD + 1 slices at most: one more than HELD says the answer streams (diskhit.stream)."""
    if hit.last < hit.first:
        return ()
    meta = hit.meta
    return slices_of(slice_prefix(hit.req.entry_key, meta.slice_version), hit.first, hit.last, size, meta)


def slices_of(prefix: str, first: int, last: int, size: int, meta: ObjectMeta) -> tuple[tuple[str, int, int], ...]:
    """held_slices() of bytes `first`..`last` (first <= last) of the copy whose slice names begin with `prefix`
    (storage.slicenames.slice_prefix): a range cut from a whole answer (decide.Decider._cut) names its copy's
    prefix once for all its cuts, not once a cut (the copy's version string and its cached hashes: 0.5 µs)."""
    out = []
    stored, length = meta.slice_size, meta.length
    for index in range(first // size, min(last // size + 1, first // size + HELD + 1)):
        base = index * size
        # ObjectMeta.slice_length(index), max() and min() written out: the calls cost a new range's answer 0.5 µs
        at = index * stored
        end = base + ((at + stored if at + stored < length else length) - at)
        lo, hi = first - base if first > base else 0, (last + 1 if last < end else end) - base
        out.append((prefix + str(index), lo, hi))
    return tuple(out)
