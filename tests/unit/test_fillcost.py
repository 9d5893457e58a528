"""The rule bounding what a multipart Range may make the origin send: exact cases, then properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.fillcost import (
    FILL_ALLOWANCE_SLICES,
    FILL_FACTOR,
    MAX_PROBED_FILLS,
    FillPlan,
    cold_run,
    fills_for,
    may_take_too_many,
    needed_slices,
    plan_fill,
    run_serves,
    stored_run,
    too_many_fills,
)
from edgecache.core.ranges import ByteRange

MiB = 2**20
R = ByteRange


def one_byte_parts(n: int, size: int) -> tuple[ByteRange, ...]:
    return tuple(R(i * size, i * size) for i in range(n))


def test_the_numbers_are_what_the_docs_say() -> None:
    assert (FILL_FACTOR, FILL_ALLOWANCE_SLICES) == (2, 4)


def test_32_one_byte_parts_on_32_slices_pass() -> None:
    assert plan_fill(one_byte_parts(32, MiB), MiB) is FillPlan.PASS


def test_a_single_range_always_fills() -> None:
    assert plan_fill((R(5 * MiB, 5 * MiB),), MiB) is FillPlan.FILL


def test_two_small_parts_fill() -> None:
    assert plan_fill((R(0, 1023), R(100 * MiB, 100 * MiB + 1023)), MiB) is FillPlan.FILL


def test_the_limit_is_inclusive() -> None:
    # k one-byte parts on k slices of 100 bytes: cost 100k, limit 2k + 400; 4 parts fit (400 <= 408), 5 do not.
    assert plan_fill(one_byte_parts(4, 100), 100) is FillPlan.FILL
    assert plan_fill(one_byte_parts(5, 100), 100) is FillPlan.PASS


def test_cached_slices_cost_nothing() -> None:
    parts = one_byte_parts(32, MiB)
    assert plan_fill(parts, MiB, cached=range(32)) is FillPlan.FILL
    assert plan_fill(parts, MiB, cached=range(28)) is FillPlan.FILL  # 4 left: the allowance
    assert plan_fill(parts, MiB, cached=range(27)) is FillPlan.PASS


def test_cached_slices_outside_the_parts_do_not_count() -> None:
    assert plan_fill(one_byte_parts(32, MiB), MiB, cached=range(100, 200)) is FillPlan.PASS


def test_parts_of_a_slice_or_more_fill() -> None:
    parts = tuple(R(i * 2 * MiB, i * 2 * MiB + MiB - 1) for i in range(32))
    assert plan_fill(parts, MiB) is FillPlan.FILL


def test_many_parts_in_one_slice_cost_one_slice() -> None:
    parts = tuple(R(i * 10, i * 10) for i in range(64))
    assert plan_fill(parts, MiB) is FillPlan.FILL


def test_an_object_fetched_whole_fills() -> None:
    assert plan_fill(one_byte_parts(32, MiB), MiB, whole=True) is FillPlan.FILL


def test_a_huge_part_is_counted_without_listing_its_slices() -> None:
    parts = (R(0, 0), R(10**15, 2 * 10**15))
    assert plan_fill(parts, 4096) is FillPlan.FILL


parts_strategy = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 300)).map(lambda t: R(t[0], t[0] + t[1])), min_size=1, max_size=12
)


@given(parts_strategy, st.integers(1, 700), st.sets(st.integers(0, 60)))
def test_the_rule_matches_a_direct_count(parts: list[ByteRange], size: int, cached: set[int]) -> None:
    """Fill exactly when the bytes of the touched, uncached slices are within the bound."""
    touched = {i for p in parts for i in range(p.first // size, p.last // size + 1)}
    assert needed_slices(tuple(parts), size) == sorted(touched)
    cost = len(touched - cached) * size
    served = sum(p.length for p in parts)
    fits = cost <= FILL_FACTOR * served + FILL_ALLOWANCE_SLICES * size
    want = FillPlan.FILL if len(parts) == 1 or fits else FillPlan.PASS
    assert plan_fill(tuple(parts), size, cached) is want


@pytest.mark.parametrize(
    ("method", "value", "run"),
    [
        ("GET", None, (0, None)),  # no Range: the whole object, no Range sent
        ("GET", "bytes=0-99", (0, 0)),
        ("GET", f"bytes={3 * MiB + 5}-{3 * MiB + 9}", (3, 3)),
        ("GET", f"bytes={MiB}-{20 * MiB}", (1, 4)),  # at most fill_slices (4) slices
        ("GET", f"bytes={2 * MiB}-", (2, 5)),  # open-ended: a run of fill_slices
        ("GET", "bytes=-100", (0, 0)),  # suffix: the length comes with slice 0
        ("GET", f"bytes={5 * MiB}-{5 * MiB + 1},0-1", (5, 5)),  # the first range's slices
        ("GET", "bytes=garbage", (0, None)),  # ignored, as the answer ignores it
        ("HEAD", f"bytes={5 * MiB}-", (0, 0)),  # a HEAD learns the fields from slice 0
    ],
)
def test_a_fill_of_an_object_nothing_is_known_of_starts_at_the_first_ranges_slice(
    method: str, value: str | None, run: tuple[int, int | None]
) -> None:
    assert cold_run(method, value, MiB, 4) == run


@pytest.mark.parametrize(
    ("value", "whole", "run"),
    [
        (None, False, (0, 0)),  # no Range: slice 0 first, the rest as they are read
        (f"bytes={3 * MiB + 5}-", False, (3, 3)),  # the slice of the first byte asked
        (f"bytes={5 * MiB}-{5 * MiB + 1},{MiB}-{MiB + 1}", False, (5, 5)),  # the answer's first part (the order asked)
        ("bytes=-100", False, (9, 9)),  # a suffix is known once the length is: the last slice
        (f"bytes={20 * MiB}-", False, (0, 0)),  # unsatisfiable: the 416 comes from the stored length
        (f"bytes={3 * MiB}-", True, (0, None)),  # kept whole: the whole object, whatever the Range
    ],
)
def test_a_fill_of_a_stored_object_starts_at_the_slice_of_the_first_byte_asked(
    value: str | None, whole: bool, run: tuple[int, int | None]
) -> None:
    assert stored_run(value, whole, 10 * MiB - 7, MiB) == run


S = 100  # slice size


def test_fills_for_counts_the_runs_a_fill_takes_within_each_part() -> None:
    parts = (ByteRange(0, 9), ByteRange(2 * S + 5, 7 * S))  # slices 0; 2-7
    assert fills_for(parts, S, [], 4) == 0
    assert fills_for(parts, S, [0], 4) == 1
    assert fills_for(parts, S, [2, 3, 4, 5, 6, 7], 4) == 2  # 2-5, 6-7
    assert fills_for(parts, S, [2, 3, 4, 5, 6, 7], 1) == 6
    assert fills_for(parts, S, [2, 4, 6], 4) == 3  # stored slices between: a fill stops at one
    assert fills_for(parts, S, [0, 1, 2], 4) == 2  # slice 1 is no part's: 0 alone, then 2
    shared = (ByteRange(0, 2 * S - 1), ByteRange(S, 3 * S - 1))  # slice 1 in both parts
    assert fills_for(shared, S, [0, 1, 2], 1) == 3  # each once


def test_too_many_fills_is_past_the_bound_and_never_for_one_range_or_a_whole_copy() -> None:
    n = MAX_PROBED_FILLS
    parts = (ByteRange(0, 9), ByteRange(S, n * S - 1))  # slices 0; 1..n-1: n fills of one slice
    assert not too_many_fills(parts, S, range(n), 1)
    more = (ByteRange(0, 9), ByteRange(S, (n + 1) * S - 1))  # slices 0; 1..n: n + 1
    assert too_many_fills(more, S, range(n + 1), 1)
    assert not too_many_fills(more, S, range(n + 1), 2)  # 0, then n slices in pairs
    assert not too_many_fills(more, S, range(n + 1), 1, whole=True)
    assert not too_many_fills((ByteRange(0, 100 * S),), S, range(101), 1)
    assert may_take_too_many(more, S)
    assert not may_take_too_many(more, S, whole=True)
    assert not may_take_too_many((ByteRange(0, 9), ByteRange(S, 2 * S)), S)


def test_a_run_of_a_copy_with_no_version_serves_only_answers_within_it() -> None:
    def serves(versioned: bool, run: tuple[int, int | None], needed: tuple[int, int] | None) -> bool:
        return run_serves(versioned, run, lambda: needed)

    assert serves(False, (0, 0), (0, 0))  # the range the run was asked for
    assert serves(False, (2, 5), (3, 5))
    assert serves(False, (0, 0), None)  # a HEAD, a 304, a 416: no body
    assert serves(False, (0, None), (0, 99))  # a fill of the whole object
    assert not serves(False, (0, 0), (0, 3))  # a whole GET that joined a range's fill
    assert not serves(False, (0, 3), (0, 5))  # bytes=0- past a run of fill_slices
    assert not serves(False, (2, 5), (1, 5))
    assert serves(True, (0, 0), (0, 3))  # a copy with a version is completed by fills of its own


def test_a_run_serves_without_planning_the_answer_when_it_need_not() -> None:
    def unasked() -> tuple[int, int] | None:
        raise AssertionError("planned")

    assert run_serves(True, (0, 0), unasked)
    assert run_serves(False, (0, None), unasked)
