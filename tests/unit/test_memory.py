"""The memory tier: never over budget, exact bytes back, and S3-FIFO beating LRU on a skewed trace."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from edgecache.storage.memory import MemoryTier
from edgecache.storage.policy import LRUPolicy, S3FIFOPolicy


def test_lru_order_and_accounting() -> None:
    p = LRUPolicy(300, max_item_fraction=1)
    assert p.admit("a", 100) == []
    assert p.admit("b", 100) == []
    assert p.admit("c", 100) == []
    p.touch("a")
    assert p.admit("d", 100) == ["b"]
    assert p.used_bytes == 300
    assert p.admit("a", 50) == []  # replacing an entry re-accounts it
    assert p.used_bytes == 250


def test_s3fifo_drops_one_hit_wonders_before_reused_items() -> None:
    p = S3FIFOPolicy(1000, max_item_fraction=1, small_fraction=0.1)
    p.admit("hot", 100)
    p.touch("hot")  # reused while in the small queue: promoted on eviction, not dropped
    evicted = []
    for i in range(20):
        evicted += p.admit(f"once{i}", 100)
    assert "hot" in p
    assert "once0" in evicted


def test_s3fifo_ghost_hit_goes_to_main() -> None:
    p = S3FIFOPolicy(300, max_item_fraction=1)
    p.admit("a", 100)
    for k in ("b", "c", "d"):
        p.admit(k, 100)
    assert "a" not in p
    p.admit("a", 100)  # seen recently: straight into main
    assert "a" in p._main


def test_tier_rejects_items_over_its_share() -> None:
    t = MemoryTier(800)
    assert t.put("small", b"x" * 100) is True
    assert t.put("big", b"x" * 101) is False  # more than 1/8 of the budget would flush the tier
    assert t.get("big") is None
    assert t.get("small") == b"x" * 100
    s = t.stats()
    assert (s.objects, s.used_bytes, s.rejections, s.admissions) == (1, 100, 1, 1)


ops = st.lists(
    st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 30), st.integers(0, 300)), max_size=300
)


@given(ops, st.sampled_from(["s3fifo", "lru"]))
def test_never_over_budget_and_exact_bytes(operations: list[tuple[str, int, int]], policy: str) -> None:
    t = MemoryTier(2000, policy)
    last: dict[str, bytes] = {}
    for op, k, size in operations:
        key = f"k{k}"
        if op == "put":
            value = bytes([k]) * size
            if t.put(key, value):
                last[key] = value
            else:
                last.pop(key, None)
        elif op == "delete":
            t.delete(key)
            last.pop(key, None)
        else:
            got = t.get(key)
            if got is not None:
                assert got == last[key]
        assert t.stats().used_bytes == sum(len(t._values[x]) for x in t._values) <= 2000


def zipf_trace(n_keys: int, n: int, alpha: float, seed: int) -> list[int]:
    rnd = random.Random(seed)
    weights = [1 / (i + 1) ** alpha for i in range(n_keys)]
    return rnd.choices(range(n_keys), weights=weights, k=n)


def byte_hit_ratio(tier: MemoryTier, trace: list[int], sizes: list[int]) -> float:
    hit = total = 0
    for k in trace:
        total += sizes[k]
        if tier.get(f"k{k}") is not None:
            hit += sizes[k]
        else:
            tier.put(f"k{k}", b"\0" * sizes[k])
    return hit / total


def test_s3fifo_beats_lru_on_a_zipf_trace() -> None:
    rnd = random.Random(1)
    sizes = [rnd.choice([4096, 16384, 65536, 131072]) for _ in range(2000)]
    trace = zipf_trace(2000, 50_000, 0.9, seed=2)
    budget = sum(sizes) // 10
    s3 = byte_hit_ratio(MemoryTier(budget, "s3fifo"), trace, sizes)
    lru = byte_hit_ratio(MemoryTier(budget, "lru"), trace, sizes)
    print(f"byte hit ratio at 10% of the working set: s3fifo {s3:.3f}, lru {lru:.3f}")
    assert s3 > lru
