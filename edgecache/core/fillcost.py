"""What a request may make the origin send: the rule that decides whether a multipart Range fills its slices.

A slice is the unit of a fill, so a range costs the origin every slice it touches: one byte of a 1 MiB slice costs
1 MiB. For a single range that waste is at most two slices (its two ends) and is the price of the slice design. A
multipart range pays it per part: 32 one-byte parts on a large object made the origin send 32 slices for 32 bytes,
and again for every cache-busting query string. Such a request is passed through instead (its own Range goes to
the origin and the answer is relayed, nothing stored), so what the origin sends stays in proportion to what is
served.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from enum import StrEnum

from edgecache.core import ranges
from edgecache.core.ranges import ByteRange, parse_range_header

# A multipart request fills only while the slices it would fetch come to at most FILL_FACTOR times the bytes it
# serves plus FILL_ALLOWANCE_SLICES slices. The allowance is what one single-range miss may already cost (one fill
# of cache.fill_slices' default, 4), so the common multipart uses, a player or a PDF reader asking for two or three
# regions of a file (header, index, a page), still fill and are then hits. The factor of 2 bounds the rest: a
# request whose parts are each a slice or more fills; one made of many small parts scattered over many slices,
# where nearly every fetched byte would be thrown away (and an attacker's favourite amplification), does not.
FILL_FACTOR = 2
FILL_ALLOWANCE_SLICES = 4
# A multipart answer reads, before its head goes out, the first bytes of every fill its missing slices take: each is
# then known to bring the stored copy's version (a part's new version met after the head cut the answer after the
# parts before it; Varnish and ATS answer several ranges from a whole object only). Past this many fills (each waits
# for its origin's first bytes, one after another, and holds up to cache.fill_slices slices), the request is passed
# through instead: the origin's own answer is one version, and nothing here waits or holds for it.
MAX_PROBED_FILLS = 8


class FillPlan(StrEnum):
    FILL = "fill"  # fetch the missing slices, store them, serve from them
    PASS = "pass"  # forward the client's Range to the origin and relay the answer; store nothing


def needed_slices(parts: tuple[ByteRange, ...], slice_size: int) -> list[int]:
    """The slices the parts touch, ascending, each once. Only worth listing when plan_fill() says PASS with
    nothing cached: that happens only for small parts, so the list is then short (a few hundred at most)."""
    seen: set[int] = set()
    for part in parts:
        seen.update(range(part.first // slice_size, part.last // slice_size + 1))
    return sorted(seen)


def plan_fill(
    parts: tuple[ByteRange, ...], slice_size: int, cached: Collection[int] = (), *, whole: bool = False
) -> FillPlan:
    """FILL or PASS for a request serving `parts`; `cached` are slice indices already stored or being fetched.

    A single range always fills (the slice design). So does an object fetched whole (`whole`: its origin ignores
    Range or it has no validator): passing it through would cost the origin as much and store nothing.
    """
    if len(parts) <= 1 or whole:
        return FillPlan.FILL
    served = sum(p.length for p in parts)
    touched = _count(parts, slice_size)
    have = sum(1 for i in set(cached) if any(p.first // slice_size <= i <= p.last // slice_size for p in parts))
    cost = (touched - have) * slice_size
    return FillPlan.FILL if cost <= FILL_FACTOR * served + FILL_ALLOWANCE_SLICES * slice_size else FillPlan.PASS


def fills_for(parts: tuple[ByteRange, ...], slice_size: int, missing: Collection[int], fill_slices: int) -> int:
    """How many fills the `missing` slices of `parts` take, as reading._start_for runs them: each from a missing slice
    through the missing ones right after it within its part, fill_slices at most; a slice two parts share, once."""
    absent, taken, count = sorted(set(missing)), set[int](), 0
    for part in parts:
        first, last = part.first // slice_size, part.last // slice_size
        run, before = 0, -2
        for index in (i for i in absent if first <= i <= last and i not in taken):
            if index == before + 1 and run < fill_slices:
                run += 1
            else:
                count, run = count + 1, 1
            taken.add(index)
            before = index
    return count


def too_many_fills(
    parts: tuple[ByteRange, ...], slice_size: int, missing: Collection[int], fill_slices: int, *, whole: bool = False
) -> bool:
    """Whether a multipart answer whose parts lack the `missing` slices takes more fills than MAX_PROBED_FILLS: it is
    passed through (PASS). Never for one fetched whole (one fill, one version)."""
    return len(parts) > 1 and not whole and fills_for(parts, slice_size, missing, fill_slices) > MAX_PROBED_FILLS


def may_take_too_many(parts: tuple[ByteRange, ...], slice_size: int, *, whole: bool = False) -> bool:
    """Whether too_many_fills may say so, with nothing stored: the parts touch more slices than MAX_PROBED_FILLS."""
    return len(parts) > 1 and not whole and _count(parts, slice_size) > MAX_PROBED_FILLS


def _count(parts: tuple[ByteRange, ...], slice_size: int) -> int:
    """How many distinct slices the parts touch, without listing them (a part may span millions of slices)."""
    count = 0
    last_counted = -1
    for part in sorted(parts, key=lambda p: p.first):
        first, last = part.first // slice_size, part.last // slice_size
        first = max(first, last_counted + 1)
        if last >= first:
            count += last - first + 1
            last_counted = last
    return count


def cold_run(method: str, range_value: str | None, slice_size: int, fill_slices: int) -> tuple[int, int | None]:
    """The slices a fill starts with when nothing is known of the object (last None: the whole object, no Range
    sent): from the first range's first slice, at most fill_slices of them; slice 0 alone for a HEAD, or for a
    suffix range, whose place is known only once the first slice has told the length."""
    if method == "HEAD":
        return 0, 0
    specs = parse_range_header(range_value) if range_value else None
    if not specs:
        return 0, None
    spec = specs[0]
    if spec.first is None:
        return 0, 0
    first = spec.first // slice_size
    last = spec.last // slice_size if spec.last is not None else first + fill_slices - 1
    return first, min(last, first + fill_slices - 1)


def stored_run(range_value: str | None, whole: bool, length: int, slice_size: int) -> tuple[int, int | None]:
    """The slices a fill of an object stored here starts with (its revalidation, or a slice it lacks): the whole
    object when it is kept whole, else the slice of the first byte asked (the first range's, or 0)."""
    if whole:
        return 0, None
    result = ranges.resolve(range_value, length) if range_value else ranges.NoRange()
    first = result.range.first if isinstance(result, ranges.Single) else 0
    if isinstance(result, ranges.Multi):
        first = result.ranges[0].first
    return first // slice_size, first // slice_size


def run_serves(versioned: bool, run: tuple[int, int | None], needed: Callable[[], tuple[int, int] | None]) -> bool:
    """Whether a miss whose answer's body reads slices first..last (`needed()`, asked only if need be: it plans the
    answer; None: it reads none) may be answered from a fill of the slices run[0]..run[1] (None: to the object's end),
    its head in. A copy with a version may: a slice past the run is fetched by a fill of its own and proven the same
    copy (its validator). One with none (entry.versioned) only within the run: any other fetch brings another copy,
    met once the answer had begun (the head and the run's slices out, the rest never), so such a miss reads a fill of
    the whole object instead."""
    if versioned or run[1] is None:
        return True
    span = needed()
    return span is None or (run[0] <= span[0] and span[1] <= run[1])
