from __future__ import annotations

from edgecache.core.ratelimit import RateLimiter


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
