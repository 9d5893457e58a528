"""core.memo: a bounded table that keeps what is still asked for, where clearing a full table dropped it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.memo import Memo, Pool, Seen


def test_an_entry_asked_between_additions_outlives_a_scan_of_new_ones() -> None:
    memo: Memo[str, int] = Memo(4)
    memo["popular"] = 0
    for i in range(1000):  # keys asked once each, as a crawler's or a long tail's
        memo[f"once-{i}"] = i
        if i % 3 == 0:
            assert memo.get("popular") == 0
        assert len(memo) <= 8
    assert memo.get("once-0") is None  # asked once and long ago: gone
    assert memo.get("once-999") == 999


def test_an_entry_not_asked_for_two_generations_is_dropped() -> None:
    memo: Memo[str, int] = Memo(2)
    memo["a"] = 1
    memo["b"] = 2
    memo["c"] = 3  # the newer is full: a and b are the older now
    assert (memo.get("a"), len(memo)) == (1, 3)  # found in the older: moved to the newer
    memo["d"] = 4  # the newer (c, a) is full: b is dropped
    assert memo.get("b") is None
    assert [memo.get(k) for k in "acd"] == [1, 3, 4]


def test_replace_forget_and_clear() -> None:
    memo: Memo[str, int] = Memo(2)
    memo["a"] = 1
    memo["b"] = 2
    memo["c"] = 3
    memo["a"] = 10  # in the older: the newer's value is the only one kept
    assert (memo.get("a"), len(memo)) == (10, 3)
    del memo["a"]
    del memo["c"]
    assert (memo.get("a"), memo.get("c"), len(memo)) == (None, None, 1)
    with pytest.raises(KeyError):
        del memo["a"]
    memo.clear()
    assert (len(memo), memo.get("b")) == (0, None)
    with pytest.raises(ValueError, match="at least one"):
        Memo(0)


@given(st.lists(st.tuples(st.sampled_from("gsd"), st.integers(0, 9)), max_size=200), st.integers(1, 5))
def test_it_answers_as_a_dict_would_for_every_key_it_still_holds(ops: list[tuple[str, int]], size: int) -> None:
    memo: Memo[int, int] = Memo(size)
    model: dict[int, int] = {}
    for n, (op, key) in enumerate(ops):
        if op == "s":
            memo[key] = model[key] = n
        elif op == "d" and memo.get(key) is not None:
            del memo[key]
            del model[key]
        else:
            found = memo.get(key)
            assert found is None or found == model[key]  # never another key's value, never a stale one
            if found is None:
                model.pop(key, None)
        assert len(memo) <= 2 * size


def test_keys_asked_in_turn_that_fit_one_generation_are_all_kept() -> None:
    """A player's byte-range playlist, or a benchmark's fixed list, asked round and round: after the first round,
    every lookup finds its entry (a table of half the size misses nearly all of them)."""
    memo: Memo[int, int] = Memo(4096)
    for key in range(4096):
        memo[key] = key
    assert all(memo.get(key) == key for _ in range(3) for key in range(4096))
    half: Memo[int, int] = Memo(2048)
    misses = 0
    for _ in range(3):
        for key in range(4096):
            if half.get(key) is None:
                misses += 1
                half[key] = key
    assert misses > 0.99 * 3 * 4096


def test_a_generation_holds_at_most_its_budget_of_bytes() -> None:
    """Bound by bytes too (each key costs its length here): a generation is full when the next entry would take it
    past its budget, and an entry costing more than a generation is not kept."""
    memo: Memo[str, int] = Memo(100, budget=10, cost=len)
    memo["aaaa"] = 1
    memo["bbbb"] = 2
    assert (len(memo), memo.bytes) == (2, 8)
    memo["ccc"] = 3  # 11 bytes: the newer is full, and is the older now
    assert (memo.old_bytes, memo.new_bytes) == (8, 3)
    assert memo.get("aaaa") == 1  # moved to the newer
    assert (memo.old_bytes, memo.new_bytes) == (4, 7)
    memo["dddd"] = 4  # 11 again: bbbb, not asked since, is dropped
    assert (memo.get("bbbb"), len(memo), memo.bytes) == (None, 3, 11)
    memo["dddd"] = 40  # replaced: the same cost
    memo["x" * 11] = 5  # more than a generation: not kept
    assert (memo.get("x" * 11), memo.get("dddd"), memo.bytes) == (None, 40, 11)
    del memo["ccc"]
    assert (len(memo), memo.bytes) == (2, 8)
    memo.clear()
    assert (len(memo), memo.bytes) == (0, 0)
    with pytest.raises(ValueError, match="both a budget and a cost"):
        Memo(4, budget=10)


@given(st.lists(st.tuples(st.sampled_from("gsd"), st.integers(0, 45)), max_size=200), st.integers(1, 5))
def test_its_bytes_are_what_its_entries_cost(ops: list[tuple[str, int]], size: int) -> None:
    memo: Memo[int, int] = Memo(size, budget=40, cost=lambda key: key + 1)
    for n, (op, key) in enumerate(ops):
        if op == "s":
            memo[key] = n
        elif op == "d" and memo.get(key) is not None:
            del memo[key]
        else:
            memo.get(key)
        assert memo.new_bytes == sum(k + 1 for k in memo.new) <= 40
        assert memo.old_bytes == sum(k + 1 for k in memo.old) <= 40
        assert len(memo) <= 2 * size


def test_memos_in_a_pool_hold_its_budget_together_and_turn_together() -> None:
    """One budget for several memos (a worker's memos of decisions): when what was added since the last turn would
    pass half of it, every memo's newer generation becomes its older, and the older ones are dropped."""
    pool = Pool(40)
    a: Memo[str, int] = Memo(100, budget=30, cost=len, pool=pool)
    b: Memo[str, int] = Memo(100, budget=30, cost=len, pool=pool)
    assert (a.budget, b.budget) == (30, 30)
    assert Memo(100, budget=64, cost=len, pool=pool).budget == 40  # never more than the pool
    pool.memos.pop()
    a["aaaaa"] = 1
    b["bbbbb"] = 2
    a["ccccc"] = 3
    b["ddddd"] = 4  # 20 added: half the budget
    assert (pool.bytes, pool.added) == (20, 20)
    a["eeeee"] = 5  # 25 would be past half: both turn
    assert (a.old_bytes, a.new_bytes, b.old_bytes, b.new_bytes, pool.added) == (10, 5, 10, 0, 5)
    assert b.get("bbbbb") == 2  # moved to the newer: no addition
    assert (b.old_bytes, b.new_bytes, pool.added) == (5, 5, 5)
    for key in ("fffff", "ggggg", "hhhhh"):
        b[key] = 0
    b["iiiii"] = 0  # 25 added: they turn again, and what was not asked since the last turn is dropped
    assert [a.get(k) for k in ("aaaaa", "ccccc", "eeeee")] == [None, None, 5]
    assert [b.get(k) for k in ("bbbbb", "ddddd", "iiiii")] == [2, None, 0]
    assert pool.bytes <= 40
    with pytest.raises(ValueError, match="both a budget and a cost"):
        Memo(4, pool=Pool(10))


def test_keys_asked_in_turn_that_fit_a_generation_and_the_pool_are_kept_from_their_second_round() -> None:
    """A player's byte-range playlist of more than half the pool: entries found in an older generation and moved
    are no additions, so they do not turn the generations (W3u's 4,096 ranges in the cuts, 13 MiB of 16)."""
    pool = Pool(5000)
    cuts: Memo[int, int] = Memo(4096, budget=5000, cost=lambda key: 1, pool=pool)
    other: Memo[int, int] = Memo(4096, budget=5000, cost=lambda key: 1, pool=pool)
    misses = []
    for _ in range(4):
        missed = 0
        for key in range(4000):
            if cuts.get(key) is None:
                missed += 1
                cuts[key] = key
            if key % 100 == 0 and other.get(key % 7) is None:
                other[key % 7] = key
        misses.append(missed)
    assert misses == [4000, 0, 0, 0]
    assert pool.bytes == 4007


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from("gsdc"), st.integers(0, 45)), max_size=300))
def test_memos_in_a_pool_never_hold_more_than_its_budget(ops: list[tuple[int, str, int]]) -> None:
    pool = Pool(60)
    memos: list[Memo[int, int]] = [Memo(5, budget=40, cost=lambda key: key + 1, pool=pool) for _ in range(3)]
    model: dict[tuple[int, int], int] = {}
    for n, (i, op, key) in enumerate(ops):
        memo = memos[i]
        if op == "s":
            memo[key] = model[i, key] = n
        elif op == "d" and memo.get(key) is not None:
            del memo[key]
            del model[i, key]
        elif op == "c" and key == 0:  # now and then
            memo.clear()
            model = {k: v for k, v in model.items() if k[0] != i}
        else:
            found = memo.get(key)
            assert found is None or found == model[i, key]
        for m in memos:
            assert m.new_bytes == sum(k + 1 for k in m.new) <= 40
            assert m.old_bytes == sum(k + 1 for k in m.old) <= 40
        # the pool's running sums are its memos' (make_room reads them instead of summing the memos)
        assert pool.new_bytes == sum(m.new_bytes for m in memos)
        assert pool.old_bytes == sum(m.old_bytes for m in memos)
        assert pool.bytes == sum(m.bytes for m in memos) <= 60


def test_a_pool_turns_only_past_its_budget_exactly() -> None:
    """Half the budget added since the last turn, or the whole budget held, is still room; a byte more turns the
    generations, as the sums of the memos' bytes say, whichever memos hold them and however they got there."""
    pool = Pool(40)
    a: Memo[str, int] = Memo(100, budget=40, cost=len, pool=pool)
    b: Memo[str, int] = Memo(100, budget=40, cost=len, pool=pool)
    a["a" * 10] = 1
    b["b" * 10] = 2  # 20 added: exactly half, no turn
    assert (pool.new_bytes, pool.old_bytes, pool.added) == (20, 0, 20)
    b["c"] = 3  # 21: both turn
    assert (pool.new_bytes, pool.old_bytes, pool.added) == (1, 20, 1)
    del b["c"]
    a["d" * 9] = 4
    b["e" * 10] = 5  # 20 added since the turn, 40 held: exactly the budget, no turn
    assert (pool.new_bytes, pool.old_bytes, pool.added, pool.bytes) == (19, 20, 20, 39)
    a["f"] = 6  # 40 held, 21 added: past half, they turn
    assert (pool.new_bytes, pool.old_bytes, pool.added) == (1, 19, 1)
    assert [a.get("a" * 10), b.get("e" * 10)] == [None, 5]  # the older ones dropped; found and moved, no addition
    assert (pool.new_bytes, pool.old_bytes, pool.added) == (11, 9, 1)
    b.clear()
    assert (pool.new_bytes, pool.old_bytes, pool.bytes) == (1, 9, 10)
    a["g" * 30] = 7  # 40 held with it, but 31 added since the turn: past half, they turn
    assert (pool.new_bytes, pool.old_bytes, pool.added) == (30, 1, 30)
    a["h" * 10] = 8  # past half again: they turn, once (the newer and it are exactly the budget)
    assert (pool.new_bytes, pool.old_bytes, pool.bytes) == (10, 30, 40)
    b["i" * 31] = 9  # the newer and it would pass the budget: turned twice, every memo emptied, then added
    assert (pool.new_bytes, pool.old_bytes, pool.bytes, len(a), len(b)) == (31, 0, 31, 0, 1)


def test_seen_knows_a_key_from_its_second_time_within_its_bound() -> None:
    seen = Seen(4)
    assert [seen.again(k) for k in (b"a", b"b", b"a", b"a")] == [False, False, True, True]
    for i in range(1000):  # keys seen once each: a player's ranges
        assert not seen.again(f"once-{i}".encode())
        if i % 3 == 0:
            assert seen.again(b"a")  # seen within every 4 new keys: kept
        assert len(seen) <= 8  # two generations of 4 hashes, whatever comes
    assert not seen.again(b"b")  # not seen for two generations: new again
