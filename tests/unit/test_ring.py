"""The ring: stable, weighted, minimal movement; health hysteresis."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.health import Health
from edgecache.core.ring import Member, Ring

N3 = [Member(f"node{i}", f"127.0.0.1:{8090 + i}") for i in (1, 2, 3)]
KEYS = [f"videos|video.test|/v/{i}.mp4" for i in range(20_000)]


def test_golden_owners_are_stable_across_processes_and_versions() -> None:
    # Fixed expectations: a change here moves every cached object of every deployed cluster.
    ring = Ring.of(N3)
    keys = ["videos|video.test|/a", "videos|video.test|/b", "x"]
    assert [[m.id for m in ring.owners(k)] for k in keys] == [
        ["node2", "node1", "node3"],
        ["node3", "node1", "node2"],
        ["node3", "node2", "node1"],
    ]
    assert ring.owner(keys[0]) == ring.owners(keys[0])[0]


def test_adding_a_fourth_node_moves_a_quarter_all_to_it() -> None:
    before = Ring.of(N3)
    after = Ring.of([*N3, Member("node4", "127.0.0.1:8094")])
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert all(after.owner(k).id == "node4" for k in moved)  # type: ignore[union-attr]
    share = len(moved) / len(KEYS)
    assert 0.22 < share < 0.28, share


def test_removing_a_node_moves_only_its_keys() -> None:
    before = Ring.of(N3)
    after = Ring.of(N3[:2])
    for k in KEYS[:5000]:
        was = before.owner(k)
        assert was is not None
        if was.id != "node3":
            assert after.owner(k) == was
        else:
            assert after.owner(k) == before.owners(k)[1]  # the next owner takes over


def test_weights_shape_the_share() -> None:
    ring = Ring.of([Member("a", "x", 1.0), Member("b", "y", 2.0), Member("c", "z", 1.0)])
    counts = Counter(ring.owner(k).id for k in KEYS)  # type: ignore[union-attr]
    assert 0.46 < counts["b"] / len(KEYS) < 0.54


def test_zipf_load_spread_across_three_nodes() -> None:
    """Requests (not keys) per node for a Zipf(0.9) workload over 5,000 objects: within 25% of the mean."""
    rnd = random.Random(3)
    weights = [1 / (i + 1) ** 0.9 for i in range(5000)]
    trace = rnd.choices(range(5000), weights=weights, k=100_000)
    ring = Ring.of(N3)
    owner = {i: ring.owner(f"videos|video.test|/v/{i}.mp4").id for i in range(5000)}  # type: ignore[union-attr]
    load = Counter(owner[i] for i in trace)
    mean = len(trace) / 3
    print({k: round(v / mean, 3) for k, v in sorted(load.items())})
    assert all(0.75 < v / mean < 1.25 for v in load.values())


@given(st.text(max_size=50))
def test_owners_is_a_permutation(key: str) -> None:
    owners = Ring.of(N3).owners(key)
    assert sorted(m.id for m in owners) == ["node1", "node2", "node3"]


def test_health_hysteresis() -> None:
    h = Health()
    h = h.record(False, rise=2, fall=3)
    h = h.record(False, rise=2, fall=3)
    assert h.up
    h = h.record(False, rise=2, fall=3)
    assert not h.up
    h = h.record(True, rise=2, fall=3)
    assert not h.up
    h = h.record(False, rise=2, fall=3).record(True, rise=2, fall=3)
    assert not h.up  # the streak restarted
    h = h.record(True, rise=2, fall=3)
    assert h.up
    assert not Health().failed_hard().up
