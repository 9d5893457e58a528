from __future__ import annotations

from edgecache.core.admit import Reply
from edgecache.core.ratelimit import KEPT, RateLimiter


def test_token_bucket_per_client() -> None:
    rl = RateLimiter(rate=2, burst=3)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", 0.0)  # another client has its own bucket
    assert rl.allow("a", 0.5)  # one token back after 0.5 s at 2/s
    assert not rl.allow("a", 0.5)


def test_table_is_bounded() -> None:
    rl = RateLimiter(rate=1, burst=1, max_clients=10)
    for i in range(100):
        rl.allow(f"c{i}", 0.0)
    assert len(rl._buckets) == 10


def test_a_bucket_that_filled_up_again_is_forgotten() -> None:
    """A client whose bucket is full again is the same as one never seen: past KEPT clients the table holds only
    those of the last burst / rate seconds (the soak's ever new addresses kept 100,000 buckets, 20 MB a worker)."""
    rl = RateLimiter(rate=1, burst=20)
    for i in range(2 * KEPT):
        assert rl.allow(f"c{i}", i / (4 * KEPT))
    assert len(rl._buckets) == 2 * KEPT  # each spent a token within the last half second: none is full again
    assert [rl.allow("a", 1.0) for _ in range(21)] == [True] * 20 + [False]  # "a" spends its whole burst
    assert len(rl._buckets) == 2 * KEPT  # c0's token came back at 1.0: full, forgotten; "a" is new
    assert rl.allow("b", 2.0)
    assert len(rl._buckets) == 2  # every cN is full again; "a" has 1 token of 20 and is kept
    assert [rl.allow("a", 2.0) for _ in range(2)] == [True, False]  # as it would have been without forgetting
    assert rl.allow("late", 30.0)
    assert len(rl._buckets) == 3  # "a" and "b" are full again, but below KEPT nothing is dropped


def test_an_ipv6_client_is_its_64() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert [rl.allow(c, 0.0) for c in ("2001:db8:0:1::1", "2001:db8:0:1:8000::2")] == [True, False]  # one /64
    assert rl.allow("2001:db8:0:2::1", 0.0)  # another /64
    assert [rl.allow(c, 0.0) for c in ("192.0.2.1", "192.0.2.2")] == [True, True]  # IPv4: one address each
    assert [rl.allow(c, 0.0) for c in ("::ffff:192.0.2.1", "::ffff:192.0.2.3")] == [False, True]  # as a hop wrote it
    assert [rl.allow("-", 0.0) for _ in range(2)] == [True, False]  # no address known: the text is the bucket


def test_a_refusal_says_when_the_next_token_comes() -> None:
    rl = RateLimiter(rate=0.25, burst=1)
    assert rl.refusal("a", 0.0) is None
    assert rl.refusal("a", 1.0) == Reply(429, "too many requests from this address", 3)  # 0.25 token: 3 s more
    assert rl.refusal("a", 3.9) == Reply(429, "too many requests from this address", 1)  # 0.975: rounded up to 1
    assert rl.refusal("a", 4.0) is None
    fast = RateLimiter(rate=100, burst=1)
    assert fast.refusal("b", 0.0) is None
    assert fast.refusal("b", 0.0) == Reply(429, "too many requests from this address", 1)  # 10 ms: at least 1 s
