"""core.status: the Cache-Status strings, `hit` only while no byte was fetched, and one cause per miss."""

from __future__ import annotations

import pytest

from edgecache.core.freshness import Freshness
from edgecache.core.status import (
    MISSES,
    CacheStatus,
    MissCause,
    cache_status_header,
    found_of,
    miss_cause,
    with_fetched,
)


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


FRESH, STALE = Freshness(lifetime=600, age=300), Freshness(lifetime=600, age=900)


@pytest.mark.parametrize(
    ("asked", "fresh", "found"),
    [
        ((), FRESH, ""),
        ((("Cache-Control", "no-cache"),), FRESH, "request"),
        ((("Pragma", "no-cache"),), FRESH, "request"),
        ((("cache-control", "max-age=0"),), FRESH, "request"),
        ((("Cache-Control", "max-age=299"),), FRESH, "request"),  # below its age
        ((("Cache-Control", "max-age=300"),), FRESH, ""),
        ((("Cache-Control", "min-fresh=301"),), FRESH, "request"),  # beyond the 300 s of freshness left
        ((("Cache-Control", "min-fresh=300"),), FRESH, ""),
        ((("Cache-Control", "no-store"),), FRESH, ""),
        ((("Cache-Control", "no-cache"),), STALE, ""),  # stale anyway: it went forward for that
        ((("Cache-Control", "max-age=0"),), STALE, ""),
        ((), None, ""),  # nothing stored for the URI
    ],
)
def test_fwd_says_request_only_for_a_fresh_entry_the_requests_own_directives_kept_from_use(
    asked: tuple[tuple[str, str], ...], fresh: Freshness | None, found: str
) -> None:
    assert found_of(asked, fresh, False) == found
    fwd = found or "stale"
    assert cache_status_header(CacheStatus.REVALIDATED, found=found) == f"edgecache; fwd={fwd}; fwd-status=304"
    assert cache_status_header(CacheStatus.EXPIRED, stored=True, found=found) == f"edgecache; fwd={fwd}; stored"
    assert cache_status_header(CacheStatus.MISS, found=found) == "edgecache; fwd=uri-miss"  # nothing was stored


def test_fwd_says_vary_miss_for_a_miss_that_found_another_variant() -> None:
    assert found_of((), None, True) == "vary-miss"
    assert cache_status_header(CacheStatus.MISS, stored=True, found="vary-miss") == "edgecache; fwd=vary-miss; stored"
    assert cache_status_header(CacheStatus.EXPIRED, found="vary-miss") == "edgecache; fwd=stale"
