"""loadtest.placement measures what it says: the slices it reads in huge pages are the heap's bytes, exactly, from a
2 MiB boundary; every slice gets a figure; every answer it sends is counted for its placement."""

from __future__ import annotations

import math

from loadtest.placement import HUGE, MiB, address, huge_arena, make_slices, read_costs, send_costs
from tests.e2e.procs import free_port


def test_slices_are_whole_mebibytes_and_the_arena_holds_their_bytes() -> None:
    slices = make_slices(3, seed=7)
    assert [len(s) for s in slices] == [MiB] * 3
    assert make_slices(3, seed=7) == slices  # the same bytes for the same seed: runs compare like with like
    _arena, parts = huge_arena(slices)
    assert [bytes(p) for p in parts] == slices
    assert address(parts[0]) % HUGE == 0
    assert [address(p) - address(parts[0]) for p in parts] == [0, MiB, 2 * MiB]


def test_every_slice_of_every_placement_gets_its_least_time() -> None:
    slices = make_slices(2, seed=1)
    _arena, parts = huge_arena(slices)
    best = read_costs({"heap": [address(s) for s in slices], "huge pages": [address(p) for p in parts]}, passes=2)
    assert sorted(best) == ["heap", "huge pages"]
    assert all(len(v) == 2 and all(0 < x < math.inf for x in v) for v in best.values())


def test_answers_alternate_between_placements() -> None:
    slices = make_slices(2, seed=1)
    _arena, parts = huge_arena(slices)
    costs = send_costs({"heap": slices, "huge pages": parts}, requests=6, port=free_port(), cpu=0)
    assert {name: len(v) for name, v in costs.items()} == {"heap": 3, "huge pages": 3}
    assert all(x > 0 for v in costs.values() for x in v)
