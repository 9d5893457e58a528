"""The disk tier's policy (storage.policy.DiskPolicy), pure: the same class runs over the SQLite index on a node.

Budgets are in units of 1 byte so every step can be followed by hand: with a budget of 100, the small FIFO holds
5 bytes (DISK_SMALL_FRACTION), the main FIFO the rest.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.storage.policy import DISK_SMALL_FRACTION, MAX_FREQ, DiskPolicy


def test_small_fifo_is_five_percent() -> None:
    assert DISK_SMALL_FRACTION == 0.05
    assert DiskPolicy(100).small_budget == 5


def test_one_hit_wonders_do_not_displace_a_reused_item() -> None:
    p = DiskPolicy(100)
    assert p.admit("hot", 10) == []
    p.touch("hot")
    evicted: list[str] = []
    for i in range(200):  # a scan: 200 items, each seen once, 20 times the budget
        evicted += p.admit(f"once{i}", 10)
    assert "hot" in p
    assert p.in_main("hot")
    assert "hot" not in evicted
    assert p.used_bytes <= 100


def test_a_reused_item_is_promoted_to_main_on_probation_exit() -> None:
    p = DiskPolicy(20)  # small holds 1 byte: the first eviction looks at small
    p.admit("a", 10)
    p.touch("a")
    p.admit("b", 10)
    assert not p.in_main("a")
    assert p.admit("c", 10) == ["b"]  # a (reused) went to main; b (not) was dropped from small
    assert p.in_main("a")
    assert p.in_ghost("b")


def test_ghost_readmission_goes_straight_to_main() -> None:
    p = DiskPolicy(20)
    p.admit("a", 10)
    p.admit("b", 10)
    assert p.admit("c", 10) == ["a"]
    assert p.in_ghost("a")
    assert p.admit("a", 10) == ["b"]  # a returned: to main, and the oldest of small (b) made the room
    assert p.in_main("a")
    assert not p.in_ghost("a")  # used up
    assert not p.in_main("c")


def test_exact_eviction_order_on_a_hand_made_sequence() -> None:
    p = DiskPolicy(40)  # small 2 bytes, so small is over its share whenever it holds an item
    for key in "abcd":
        assert p.admit(key, 10) == []
    p.touch("b")
    p.touch("d")
    p.touch("d")
    # e needs 10: a (small, unused) goes; f: b (reused) is promoted, c goes; g: d promoted, e goes.
    assert p.admit("e", 10) == ["a"]
    assert p.admit("f", 10) == ["c"]
    assert p.admit("g", 10) == ["e"]
    # Small now holds f and g; main b (counter 0) and d (counter 0: promotion resets it).
    p.touch("b")
    assert p.admit("h", 10) == ["f"]
    assert p.admit("a", 10) == ["g"]  # a is a ghost: straight to main; g from small makes the room
    # Small holds h only (10 bytes) and main b, d, a. i needs room: small is over its share, so h goes first.
    assert p.admit("i", 10) == ["h"]
    # Small holds i alone, still over its 2-byte share, so the newcomer's room comes from small again.
    assert p.admit("j", 10) == ["i"]
    assert sorted(k for k in "abcdefghij" if k in p) == ["a", "b", "d", "j"]


def test_main_gives_a_second_chance_per_use() -> None:
    p = DiskPolicy(30)
    for key in ("a", "b", "c"):
        p.admit(key, 10)
    p.touch("a")
    p.touch("b")
    assert p.admit("d", 10) == ["c"]  # a, b promoted on the way
    p.touch("a")  # a: 1 use in main, b: none
    assert p.admit("x", 10) == ["d"]  # small first (over its share): d was never used
    assert p.admit("y", 10) == ["x"]
    assert p.in_main("a")
    assert p.in_main("b")


def test_a_slice_lent_to_memory_comes_back_to_main_with_a_full_counter() -> None:
    p = DiskPolicy(40)
    assert p.admit("a", 10) == []
    p.remove("a")  # the memory tier took it (exclusive tiers) and evicts it now
    assert p.admit("a", 10, lent=True) == []
    assert (p.in_main("a"), p._freq["a"]) == (True, MAX_FREQ)
    for key in "bcd":
        p.admit(key, 10)
    # A run of one-hit wonders passes through small and leaves a in main; admitted as new, it went first.
    assert [p.admit(key, 10) for key in "efgh"] == [["b"], ["c"], ["d"], ["e"]]
    assert p.in_main("a")
    new = DiskPolicy(40)
    for key in "abcd":
        new.admit(key, 10)
    assert new.admit("e", 10) == ["a"]
    assert p.admit("big", 41, lent=True) == ["big"]  # refused as any item over the budget


def test_an_item_larger_than_the_budget_is_refused() -> None:
    p = DiskPolicy(100)
    assert p.admit("big", 101) == ["big"]
    assert "big" not in p
    assert p.admit("whole", 100) == []  # up to the whole budget is admitted
    assert p.used_bytes == 100


def test_resize_evicts_to_the_new_budget() -> None:
    p = DiskPolicy(100)
    for i in range(10):
        p.admit(f"k{i}", 10)
    evicted = p.resize(50)
    assert evicted == [f"k{i}" for i in range(5)]
    assert p.used_bytes == 50


@settings(max_examples=300, deadline=None)
@given(
    budget=st.integers(1, 200),
    ops=st.lists(st.tuples(st.sampled_from("ahtl"), st.integers(0, 30), st.integers(0, 120)), max_size=120),
)
def test_budget_is_never_exceeded_and_evictions_are_held_keys(budget: int, ops: list[tuple[str, int, int]]) -> None:
    p = DiskPolicy(budget)
    held: dict[str, int] = {}
    for op, k, size in ops:
        key = f"k{k}"
        if op in "al":
            for gone in p.admit(key, size, lent=op == "l"):
                assert gone in held or gone == key
                held.pop(gone, None)
            if key in p:
                held[key] = size
        elif op == "h":
            p.touch(key)
        else:
            p.remove(key)
            held.pop(key, None)
        assert p.used_bytes == sum(held.values()) <= budget
        assert {k for k in held} == {f"k{i}" for i in range(31) if f"k{i}" in p}
