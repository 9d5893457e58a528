"""loadtest.efficiency --warm: the warm-up is other sessions over the same objects, and it is not counted."""

from __future__ import annotations

from loadtest.efficiency import replay, warmup, workload

MiB = 2**20


def test_the_warm_up_plays_other_sessions_of_the_same_objects() -> None:
    measured = list(workload(3, 40, 200))
    warm = list(warmup(3, 40, 200))
    assert warm != measured
    sizes = dict(measured)
    # A slice both traces ask is the same slice: same object, same index, same size.
    shared = [(key, size) for key, size in warm if key in sizes]
    assert shared
    assert all(sizes[key] == size for key, size in shared)
    assert list(warmup(3, 40, 200)) == warm  # seeded


def asked_before(earlier: list[tuple[str, int]], measured: list[tuple[str, int]]) -> int:
    seen = {key for key, _ in earlier}
    repeats = 0
    for key, _ in measured:
        repeats += key in seen
        seen.add(key)
    return repeats


def test_only_the_measured_sessions_are_counted_and_the_tiers_start_warm() -> None:
    measured = list(workload(3, 40, 200))
    warm = list(warmup(3, 40, 200))
    # A disk that holds every slice asked (40 objects of at most 1.2 GiB): every slice asked before is a hit.
    cold = replay(3, 40, 200, 8 * MiB, 64 * 1024 * MiB)
    warmed = replay(3, 40, 200, 8 * MiB, 64 * 1024 * MiB, warm=200)
    for runs, earlier in ((cold, []), (warmed, warm)):
        for tiers in runs.values():
            assert tiers.all.requests == len(measured)
            assert tiers.all.bytes == sum(size for _, size in measured)
            assert tiers.all.hits == asked_before(earlier, measured)
    assert warmed["node"].all.hits > cold["node"].all.hits
