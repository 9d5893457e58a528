"""loadtest.disk_bounds: the reference policies worked out by hand on streams of one-byte slices."""

from __future__ import annotations

from loadtest.disk_bounds import OBJECT_WEIGHT, History, belady, ranked


def stream(keys: str) -> list[tuple[str, int]]:
    return [(f"{key}:0", 1) for key in keys]


def test_belady_evicts_the_slice_asked_again_farthest_ahead() -> None:
    # a, b held; c is never asked again, so c goes (not a, asked next, nor b): both returns are hits.
    assert belady(stream("abcab"), 2) == 2
    # Here a is asked again last: a goes for c, and b and c are hits.
    assert belady(stream("abcbca"), 2) == 2
    assert belady(stream("abcbca"), 3) == 3


def test_ranked_evicts_the_lowest_ranked_slice_first() -> None:
    rank = {"a:0": 3.0, "b:0": 2.0, "c:0": 1.0}
    assert ranked(stream("abcab"), 2, rank.__getitem__, lambda _: None) == 2  # c goes at once
    rank = {"a:0": 1.0, "b:0": 2.0, "c:0": 5.0}
    # a goes for c; a back goes again at once (lowest); only the last b is a hit.
    assert ranked(stream("abcab"), 2, rank.__getitem__, lambda _: None) == 1


def test_a_slice_counted_since_it_was_ranked_is_ranked_again_before_it_goes() -> None:
    history = History()
    # c pushes a and b, then c, into main, all ranked 1: a goes (equal ranks leave in key order). b is asked again,
    # so when d comes b (still ranked 1 in the heap) is ranked again at 2 and c goes instead: the last b is a hit.
    assert ranked(stream("abcbdb"), 2, history.slice_rank, history.see) == 2
    assert history.slices == {"a:0": 1, "b:0": 3, "c:0": 1, "d:0": 1}


def test_object_rank_adds_the_objects_count_scaled_by_its_positions_share() -> None:
    history = History()
    for key in ("0:0", "0:0", "0:1", "1:0"):
        history.see(key)
    assert history.slice_rank("0:1") == 1
    # Object 0 was asked 3 times; position 1 was asked (1 + 1) / (3 + 1) as often as position 0.
    assert history.object_rank("0:1") == 1 + OBJECT_WEIGHT * 3 * 2 / 4 == 1.09375
    assert history.object_rank("1:0") == 1 + OBJECT_WEIGHT * 1 * 4 / 4 == 1.0625
