"""core.status: the Cache-Status strings, `hit` only while no byte was fetched, and one cause per miss."""

from __future__ import annotations

import pytest

from edgecache.core.status import MISSES, CacheStatus, MissCause, cache_status_header, miss_cause, with_fetched


def test_header_strings() -> None:
    assert cache_status_header(CacheStatus.HIT) == "edgecache; hit"
    assert cache_status_header(CacheStatus.PARTIAL) == "edgecache; fwd=partial"
    assert cache_status_header(CacheStatus.MISS, stored=True) == "edgecache; fwd=uri-miss; stored"
    assert cache_status_header(CacheStatus.REVALIDATED) == "edgecache; fwd=stale; fwd-status=304"
    assert cache_status_header(CacheStatus.PEER) == 'edgecache; fwd=miss; detail="peer"'


@pytest.mark.parametrize("status", list(CacheStatus))
def test_hit_is_said_only_when_nothing_was_fetched(status: CacheStatus) -> None:
    assert with_fetched(status, False) is status
    fetched = with_fetched(status, True)
    assert "hit" not in cache_status_header(fetched).split("; ")
    expected = CacheStatus.PARTIAL if status in (CacheStatus.HIT, CacheStatus.STALE) else status
    assert fetched is expected


def test_partial_is_a_miss_and_hits_are_not() -> None:
    assert {CacheStatus.MISS, CacheStatus.EXPIRED, CacheStatus.PARTIAL} == MISSES
    assert not MISSES & {CacheStatus.HIT, CacheStatus.STALE, CacheStatus.REVALIDATED, CacheStatus.PEER}


@pytest.mark.parametrize(
    ("facts", "cause"),
    [
        ({}, MissCause.COLD),
        ({"failover": True}, MissCause.PEER_DOWN),
        ({"evicted": True, "failover": True}, MissCause.EVICTED),
        ({"expired": True, "evicted": True}, MissCause.EXPIRED),
        ({"uncacheable": True, "expired": True, "evicted": True, "failover": True}, MissCause.UNCACHEABLE),
    ],
)
def test_one_cause_per_miss(facts: dict[str, bool], cause: MissCause) -> None:
    given = {"uncacheable": False, "expired": False, "evicted": False, "failover": False, **facts}
    assert miss_cause(**given) is cause
