"""The memory tier and its policies: exact S3-FIFO and LRU behaviour, never over budget, exact bytes back, and
S3-FIFO at least as good as LRU by byte hit ratio on a skewed trace."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edgecache.storage.memory import MemoryStats, MemoryTier, next_entries, next_limit
from edgecache.storage.policy import EvictionPolicy, LRUPolicy, S3FIFOPolicy, make_policy

# --- LRU ----------------------------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used_first() -> None:
    p = LRUPolicy(300, max_item_fraction=1)
    assert [p.admit(k, 100) for k in "abc"] == [[], [], []]
    p.touch("a")
    assert p.admit("d", 100) == ["b"]
    assert p.admit("e", 200) == ["c", "a"]  # as many as it takes, oldest first
    assert (len(p), p.used_bytes) == (2, 300)


def test_lru_replace_reaccounts_and_refreshes() -> None:
    p = LRUPolicy(300, max_item_fraction=1)
    p.admit("a", 100)
    p.admit("b", 100)
    assert p.admit("a", 50) == []
    assert (len(p), p.used_bytes) == (2, 150)
    assert p.admit("c", 150) == []
    assert p.admit("d", 100) == ["b"]  # the replaced "a" counts as recently used


# --- S3-FIFO ------------------------------------------------------------------------------------------------


def test_s3fifo_drops_one_hit_wonders_before_a_reused_item() -> None:
    p = S3FIFOPolicy(1000, max_item_fraction=1, small_fraction=0.1)
    p.admit("hot", 100)
    p.touch("hot")  # reused while on probation in small: promoted when it reaches the head, not dropped
    evicted = [k for i in range(20) for k in p.admit(f"once{i}", 100)]
    assert evicted == [f"once{i}" for i in range(11)]
    assert p.in_main("hot")
    assert all(p.in_ghost(f"once{i}") for i in range(11))
    assert (len(p), p.used_bytes) == (10, 1000)

    lru = LRUPolicy(1000, max_item_fraction=1)  # the same trace flushes the reused item out of an LRU
    lru.admit("hot", 100)
    lru.touch("hot")
    assert [k for i in range(20) for k in lru.admit(f"once{i}", 100)] == ["hot"] + [f"once{i}" for i in range(10)]


def test_s3fifo_ghost_hit_goes_straight_to_main() -> None:
    p = S3FIFOPolicy(300, max_item_fraction=1)
    for k in "abcd":
        p.admit(k, 100)
    assert "a" not in p
    assert p.in_ghost("a")
    assert p.admit("a", 100) == ["b"]
    assert p.in_main("a")
    assert not p.in_ghost("a")  # the ghost entry is used up
    assert not p.in_main("c")


def test_s3fifo_main_gives_a_second_chance_per_reuse() -> None:
    p = S3FIFOPolicy(400, max_item_fraction=1, small_fraction=0.5)
    for k in "abcd":
        p.admit(k, 100)
    p.touch("a")
    p.touch("b")
    assert p.admit("e", 100) == ["c"]  # a and b promoted to main on the way
    assert p.in_main("a")
    assert p.in_main("b")
    p.remove("d")
    p.remove("e")
    p.touch("a")
    assert p.admit("x", 150) == []
    # small (150 bytes) is under its share, so the room comes from main: a is older but was reused, so it goes
    # round once more and b goes instead.
    assert p.admit("y", 100) == ["b"]
    assert p.in_main("a")
    p.remove("y")
    assert p.admit("z", 200) == ["a"]  # its chance is spent


def test_s3fifo_frequency_is_capped_at_three() -> None:
    p = S3FIFOPolicy(400, max_item_fraction=1)
    p.admit("a", 100)
    for _ in range(10):
        p.touch("a")
    assert p._freq["a"] == 3
    p.touch("absent")  # a hit on a key the policy dropped is harmless
    assert "absent" not in p


def test_s3fifo_replacement_keeps_its_queue() -> None:
    p = S3FIFOPolicy(300, max_item_fraction=1)
    for k in "abcd":
        p.admit(k, 100)
    p.admit("a", 100)  # ghost hit: main
    assert p.admit("a", 80) == []
    assert p.in_main("a")
    assert p.used_bytes == 280


def test_s3fifo_ghost_is_bounded() -> None:
    p = S3FIFOPolicy(100, max_item_fraction=1)
    for i in range(5000):
        p.admit(f"k{i}", 100)
    assert len(p._ghost) <= 1024


# --- both policies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s3fifo", "lru"])
def test_items_over_the_share_or_the_budget_are_refused(name: str) -> None:
    p = make_policy(name, 800)
    assert p.admit("fits", 100) == []
    assert p.admit("big", 101) == ["big"]  # over 1/8: one object must not flush the tier
    assert "big" not in p
    assert p.admit("fits", 101) == ["fits"]  # a refused replacement drops the old entry too
    assert (len(p), p.used_bytes) == (0, 0)
    whole = make_policy(name, 800, max_item_fraction=4)  # clamped to the budget
    assert whole.admit("all", 800) == []
    assert whole.admit("more", 801) == ["more"]
    assert whole.used_bytes == 800


def test_unknown_policy_and_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown memory policy 'arc'"):
        MemoryTier(100, "arc")
    with pytest.raises(ValueError, match="budget must be >= 0"):
        S3FIFOPolicy(-1)
    with pytest.raises(ValueError, match="small_fraction"):
        S3FIFOPolicy(100, small_fraction=1)


# --- the tier -----------------------------------------------------------------------------------------------


def test_tier_put_get_replace_delete_and_stats() -> None:
    t = MemoryTier(800)
    assert t.put("a", b"x" * 100) is True
    assert t.put("a", b"y" * 60) is True  # replaced: bytes re-accounted, not added
    assert t.get("a") == b"y" * 60
    assert t.get("b") is None
    assert t.put("big", b"z" * 101) is False
    assert t.get("big") is None
    assert t.stats() == MemoryStats(
        used_bytes=60, budget_bytes=800, objects=1, hits=1, misses=2, evictions=0, admissions=2, rejections=1
    )
    t.delete("a")
    t.delete("never")
    assert ("a" in t, len(t), t.stats().used_bytes) == (False, 0, 0)


def test_tier_refused_replacement_never_serves_the_old_bytes() -> None:
    t = MemoryTier(800)
    t.put("a", b"old")
    assert t.put("a", b"n" * 500) is False
    assert t.get("a") is None
    assert t.stats().used_bytes == 0


def test_tier_evicts_to_stay_in_budget_and_counts_it() -> None:
    t = MemoryTier(1000, "lru", max_item_fraction=1)
    for i in range(15):
        assert t.put(f"k{i}", bytes(100))
    s = t.stats()
    assert (s.objects, s.used_bytes, s.evictions, s.admissions) == (10, 1000, 5, 15)
    assert [f"k{i}" in t for i in range(15)] == [False] * 5 + [True] * 10


def test_tier_get_counts_as_reuse() -> None:
    t = MemoryTier(1000, max_item_fraction=1)
    t.put("hot", b"h" * 100)
    assert t.get("hot") is not None
    assert "hot" in t  # a presence check is not a hit: only the get above counts
    for i in range(50):
        t.put(f"once{i}", bytes(100))
    assert t.get("hot") == b"h" * 100


def test_tier_delete_where_and_clear() -> None:
    t = MemoryTier(10_000)
    for name in ("a/1", "a/2", "b/1"):
        t.put(name, name.encode())
    assert t.delete_where(lambda k: k.startswith("a/")) == 2
    assert (len(t), t.stats().used_bytes, t.get("b/1")) == (1, 3, b"b/1")
    t.clear()
    assert (len(t), t.stats().used_bytes, t.get("b/1")) == (0, 0, None)
    assert t.put("c", b"c") is True


# --- any sequence of operations -----------------------------------------------------------------------------


class TierMachine(RuleBasedStateMachine):
    """Random put/get/delete/clear against a dict model: the tier may forget keys, but never lies or overspends."""

    tier: MemoryTier
    model: dict[str, bytes]
    values = itertools.count()

    @initialize(
        policy=st.sampled_from(["s3fifo", "lru"]),
        budget=st.integers(0, 3000),
        fraction=st.sampled_from([1 / 8, 1 / 2, 1.0, 2.0]),
    )
    def setup(self, policy: str, budget: int, fraction: float) -> None:
        self.tier = MemoryTier(budget, policy, max_item_fraction=fraction)
        self.model = {}
        self.dropped: list[tuple[str, bytes]] = []
        self.tier.on_drop = lambda k, v: self.dropped.append((k, v))

    @rule(k=st.integers(0, 40), size=st.integers(0, 1200))
    def put(self, k: int, size: int) -> None:
        key = f"k{k}"
        value = (next(self.values).to_bytes(8, "big") * (size // 8 + 1))[:size]  # distinct bytes per put
        self.model.pop(key, None)
        if self.tier.put(key, value):
            self.model[key] = value
        # Never the key put: exclusive tiers mark a slice memory keeps as memory's only once its put returns
        # (storage.tiers.keep_in_memory), so one evicted within its own put would be spilled by nobody.
        assert key not in {k for k, _ in self.dropped}
        self._evicted()

    @rule(share=st.floats(0, 1))
    def set_limit(self, share: float) -> None:
        """The RSS bound lowers the limit, or gives it back."""
        self.tier.set_limit(int(self.tier.budget_bytes * share))
        self._evicted()

    def _evicted(self) -> None:
        """What the tier handed on_drop is what it held, each once (exclusive tiers write it to disk)."""
        for k, v in self.dropped:
            assert self.model.pop(k) == v
        self.dropped.clear()

    @rule(k=st.integers(0, 40))
    def get(self, k: int) -> None:
        got = self.tier.get(f"k{k}")
        assert got is None or got == self.model[f"k{k}"]

    @rule(k=st.integers(0, 40))
    def delete(self, k: int) -> None:
        self.tier.delete(f"k{k}")
        self.model.pop(f"k{k}", None)

    @precondition(lambda self: len(self.model) > 20)
    @rule()
    def clear(self) -> None:
        self.tier.clear()
        self.model.clear()

    @invariant()
    def within_budget_and_truthful(self) -> None:
        stored = self.tier._values
        assert all(self.model[k] == v for k, v in stored.items())
        assert self.tier.stats().used_bytes == sum(map(len, stored.values())) <= self.tier.budget_bytes
        assert stored.keys() == self.model.keys()
        assert len(self.tier._policy) == len(stored)
        policy = self.tier._policy
        if isinstance(policy, S3FIFOPolicy):
            assert policy.small_bytes == sum(policy._small.values())
            assert not policy._small.keys() & policy._main.keys()
            assert not policy._ghost.keys() & stored.keys()


TestTierMachine = TierMachine.TestCase


# --- a simulated workload -----------------------------------------------------------------------------------


def zipf_trace(n_keys: int, n: int, alpha: float, seed: int) -> list[int]:
    rnd = random.Random(seed)
    cum = list(itertools.accumulate(1 / (rank + 1) ** alpha for rank in range(n_keys)))
    return rnd.choices(range(n_keys), cum_weights=cum, k=n)


def replay(policy: EvictionPolicy, trace: list[int], sizes: list[int]) -> tuple[int, int]:
    """(bytes hit, bytes requested): a miss fills the cache, as the proxy does."""
    hit = total = 0
    for k in trace:
        key, size = f"k{k}", sizes[k]
        total += size
        if key in policy:
            hit += size
            policy.touch(key)
        else:
            policy.admit(key, size)
    return hit, total


@pytest.mark.parametrize("alpha", [0.9, 1.0])
def test_s3fifo_byte_hit_ratio_is_at_least_lrus_on_zipf(alpha: float) -> None:
    rnd = random.Random(7)
    sizes = [rnd.choice([4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]) for _ in range(2000)]
    trace = zipf_trace(2000, 50_000, alpha, seed=11)
    budget = sum(sizes[k] for k in set(trace)) // 10
    s3_hit, total = replay(S3FIFOPolicy(budget), trace, sizes)
    lru_hit, _ = replay(LRUPolicy(budget), trace, sizes)
    print(
        f"zipf {alpha}, budget 10% of the working set: byte hit ratio s3fifo {s3_hit / total:.3f}, "
        f"lru {lru_hit / total:.3f}"
    )
    assert s3_hit >= lru_hit

    # The tier makes exactly the policy's decisions: the same replay through it hits the same bytes.
    tier = MemoryTier(budget)
    payload = {s: bytes(s) for s in set(sizes)}
    tier_hit = 0
    for k in trace:
        if tier.get(f"k{k}") is not None:
            tier_hit += sizes[k]
        else:
            tier.put(f"k{k}", payload[sizes[k]])
    assert tier_hit == s3_hit
    assert tier.stats().used_bytes <= budget


# --- the limit that keeps a worker's RSS bounded -------------------------------------------------------------


@pytest.mark.parametrize("policy", ["s3fifo", "lru"])
def test_a_lower_limit_evicts_down_to_it_and_a_higher_one_lets_the_tier_grow_back(policy: str) -> None:
    tier = MemoryTier(1000, policy, max_item_fraction=1)
    for k in "abcdefghij":
        assert tier.put(k, k.encode() * 100)
    assert tier.set_limit(350) == 350
    assert tier.limit == 350
    assert tier.stats().used_bytes <= 350
    assert len(tier) == 3
    assert tier.stats().evictions == 7
    for k in "abcdefghij":  # whatever is left is exact
        got = tier.get(k)
        assert got is None or got == k.encode() * 100
    tier.clear()  # a purge of everything keeps the limit
    assert tier.limit == 350
    assert tier.set_limit(5000) == 1000  # never above the budget
    for k in "klmnopqrst":
        assert tier.put(k, k.encode() * 100)
    assert tier.stats().used_bytes == 1000
    assert tier.set_limit(-5) == 0
    assert len(tier) == 0


@pytest.mark.parametrize("policy", ["s3fifo", "lru"])
def test_a_lower_limit_evicts_only_while_room_says_yes_and_holds_the_tier_until_shrink_goes_on(policy: str) -> None:
    """room (exclusive tiers: the write-back can take a slice) is asked before each eviction; a no holds the tier's
    limit at what it holds, so that puts evict within it, and shrink() goes on toward the limit set."""
    tier = MemoryTier(1000, policy, max_item_fraction=1)
    for k in "abcdefghij":
        assert tier.put(k, k.encode() * 100)
    drops: list[str] = []
    tier.on_drop = lambda key, value: drops.append(key)
    tier.room = lambda: len(drops) < 3
    assert tier.set_limit(350) == 350
    assert (len(drops), len(tier), tier.limit) == (3, 7, 700)
    assert tier.put("k", b"k" * 100)  # within the limit held: evicts one more, never grows past it
    assert (len(drops), len(tier), tier.limit, tier.stats().used_bytes) == (4, 7, 700, 700)
    tier.shrink()  # room still says no: nothing moves
    assert (len(drops), tier.limit) == (4, 700)
    tier.room = lambda: True
    tier.shrink()
    assert (len(drops), len(tier), tier.limit, tier.stats().used_bytes) == (8, 3, 350, 300)
    for k in drops:
        assert k not in tier
    assert tier.set_limit(1000) == 1000  # growing back asks nothing
    assert tier.limit == 1000


def test_a_shrink_held_back_a_whole_round_evicts_the_rest_without_asking_room() -> None:
    """The RSS bound sets the limit once a round; a tier that has not moved since the last one stopped it short
    (a stalled disk: no write-back finished) goes down to its limit anyway, its victims dropped."""
    tier = MemoryTier(1000, "lru", max_item_fraction=1)
    for k in "abcdefghij":
        assert tier.put(k, k.encode() * 100)
    drops: list[str] = []
    tier.on_drop = lambda key, value: drops.append(key)
    tier.room = lambda: len(drops) < 2
    assert tier.set_limit(500) == 500
    assert (len(drops), tier.limit) == (2, 800)
    tier.room = lambda: len(drops) < 3
    tier.shrink()  # a write finished: one more
    assert (len(drops), tier.limit) == (3, 700)
    assert tier.set_limit(500) == 500  # it moved since the last round: room is asked
    assert (len(drops), tier.limit) == (3, 700)
    assert tier.set_limit(400) == 400  # it did not: down to the limit, whatever room says
    assert (drops, tier.limit, len(tier)) == (list("abcdef"), 400, 4)
    assert tier.set_limit(300) == 300  # a new round, not held back before: room is asked again
    assert (len(drops), tier.limit) == (6, 400)


def test_next_limit_gives_up_the_excess_and_takes_back_the_slack() -> None:
    MiB = 2**20
    budget, rss_limit = 128 * MiB, 192 * MiB
    assert next_limit(budget, budget, 200 * MiB, rss_limit) == 120 * MiB  # 8 MiB over: 8 MiB less
    assert next_limit(budget, 70 * MiB, 300 * MiB, rss_limit) == 64 * MiB  # never below half the budget
    assert next_limit(budget, 100 * MiB, 190 * MiB, rss_limit) == 100 * MiB  # within the slack (8 MiB): hold
    assert next_limit(budget, 100 * MiB, 174 * MiB, rss_limit) == 110 * MiB  # 10 MiB under the slack: grow
    assert next_limit(budget, 120 * MiB, 50 * MiB, rss_limit) == budget  # never above the budget


def test_metadata_gives_way_only_once_the_tier_is_at_its_floor_and_comes_back_last() -> None:
    MiB = 2**20
    rss_limit, slack = 192 * MiB, 8 * MiB
    floor, between, full = (True, False), (False, False), (False, True)
    assert next_entries(16_384, 16_384, 200 * MiB, rss_limit, slack, between) == 16_384  # the tier gives first
    assert next_entries(16_384, 16_384, 200 * MiB, rss_limit, slack, floor) == 12_288  # then a quarter fewer
    assert next_entries(1_100, 16_384, 300 * MiB, rss_limit, slack, floor) == 1_024  # never under most/16
    assert next_entries(4_000, 16_384, 150 * MiB, rss_limit, slack, between) == 4_000  # the tier grows back first
    assert next_entries(4_000, 16_384, 188 * MiB, rss_limit, slack, full) == 4_000  # within the slack: hold
    assert next_entries(4_000, 16_384, 150 * MiB, rss_limit, slack, full) == 5_000  # then a quarter more
    assert next_entries(16_000, 16_384, 50 * MiB, rss_limit, slack, full) == 16_384  # never above most


@pytest.mark.parametrize("name", ["lru", "s3fifo"])
@pytest.mark.parametrize("seed", range(20))
def test_hottest_is_the_reverse_of_the_order_evicting_everything_takes(name: str, seed: int) -> None:
    """What a stop writes to disk first (storage.tiers.keep_on_stop) is what the policy would evict last."""
    rng = random.Random(seed)
    policy = make_policy(name, 4000)
    for _ in range(300):
        key = f"k{rng.randrange(60)}"
        if rng.random() < 0.5 and key in policy:
            policy.touch(key)
        else:
            policy.admit(key, rng.randrange(1, 400))
    hottest = policy.hottest()
    assert len(hottest) == len(policy) > 0
    assert hottest == list(reversed(policy.resize(0)))
