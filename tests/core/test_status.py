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


@pytest.mark.parametrize(
    ("asked", "revalidated", "replaced"),
    [
        ((), "stale", "stale"),
        ((("Cache-Control", "no-cache"),), "request", "request"),
        ((("Pragma", "no-cache"),), "request", "request"),
        ((("cache-control", "max-age=0"),), "request", "request"),
        ((("Cache-Control", "max-age=5"),), "stale", "stale"),  # depends on the entry's age: said stale
        ((("Cache-Control", "no-store"),), "stale", "stale"),
    ],
)
def test_fwd_says_request_when_the_requests_own_directives_sent_it_forward(
    asked: tuple[tuple[str, str], ...], revalidated: str, replaced: str
) -> None:
    assert cache_status_header(CacheStatus.REVALIDATED, asked=asked) == f"edgecache; fwd={revalidated}; fwd-status=304"
    assert cache_status_header(CacheStatus.EXPIRED, stored=True, asked=asked) == f"edgecache; fwd={replaced}; stored"
    assert cache_status_header(CacheStatus.MISS, asked=asked) == "edgecache; fwd=uri-miss"  # nothing was stored
