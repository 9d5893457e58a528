"""RFC 9111 / RFC 5861 decisions, one rule per test, with the section named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.freshness import (
    Freshness,
    Policy,
    Use,
    current_age,
    freshness_lifetime,
    invalidates,
    merge_304,
    stale_if_error_allows,
    storable,
    strip_for_storage,
    usable,
)

P = Policy()
DATE = "Sat, 01 Nov 2025 12:00:00 GMT"
T0 = 1761998400.0  # DATE as a timestamp


def h(**fields: str) -> tuple[tuple[str, str], ...]:
    return tuple((k.replace("_", "-"), v) for k, v in fields.items())


def test_parse_cache_control_5_2() -> None:
    cc = parse_cache_control((("Cache-Control", 'max-age="60", S-MAXAGE=30, no-cache="set-cookie", private'),))
    assert (cc.max_age, cc.s_maxage, cc.no_cache, cc.no_cache_fields, cc.private) == (
        60,
        30,
        False,
        ("set-cookie",),
        True,
    )
    assert parse_cache_control((("Cache-Control", "max-age=abc"),)).max_age == 0  # invalid: stale
    assert parse_cache_control((("Cache-Control", "max-age=10, max-age=5"),)).max_age == 5
    assert parse_cache_control((("Cache-Control", "max-age=99999999999999"),)).max_age == 2**31
    assert parse_cache_control((("Cache-Control", "max-stale"),)).max_stale_any


@given(st.text(max_size=100))
def test_parse_never_raises(v: str) -> None:
    parse_cache_control((("Cache-Control", v),))


@pytest.mark.parametrize(
    ("method", "status", "req", "resp", "store", "reason"),
    [
        ("GET", 200, (), h(), True, "ok"),
        ("POST", 200, (), h(Cache_Control="max-age=60"), False, "method"),
        ("GET", 302, (), h(), False, "no-freshness"),  # 3: not cacheable by default
        ("GET", 302, (), h(Cache_Control="max-age=60"), True, "ok"),
        ("GET", 200, (), h(Cache_Control="no-store"), False, "no-store"),
        ("GET", 200, h(Cache_Control="no-store"), h(), False, "no-store"),
        ("GET", 200, (), h(Cache_Control="private"), False, "private"),
        ("GET", 200, h(Authorization="x"), h(Cache_Control="max-age=60"), False, "authorization"),  # 3.5
        ("GET", 200, h(Authorization="x"), h(Cache_Control="public"), True, "ok"),
        ("GET", 200, h(Authorization="x"), h(Cache_Control="s-maxage=5"), True, "ok"),
        ("GET", 200, (), h(Vary="*"), False, "vary-star"),
        ("GET", 200, (), h(Set_Cookie="a=b"), False, "set-cookie"),
        ("GET", 200, (), h(Cache_Control="no-store, must-understand"), True, "ok"),  # 5.2.2.3
        ("GET", 299, (), h(Cache_Control="no-store, must-understand"), False, "must-understand"),
        ("GET", 404, (), h(), True, "ok"),
        ("GET", 500, (), h(), False, "no-freshness"),
    ],
)
def test_storable_3(
    method: str,
    status: int,
    req: tuple[tuple[str, str], ...],
    resp: tuple[tuple[str, str], ...],
    store: bool,
    reason: str,
) -> None:
    d = storable(method, status, req, resp, P)
    assert (d.store, d.reason) == (store, reason)


@pytest.mark.parametrize(
    ("resp", "status", "lifetime"),
    [
        (h(Cache_Control="max-age=60, s-maxage=10"), 200, 10.0),  # s-maxage wins for a shared cache
        (h(Cache_Control="max-age=60", Expires="Sat, 01 Nov 2025 13:00:00 GMT", Date=DATE), 200, 60.0),
        (h(Expires="Sat, 01 Nov 2025 13:00:00 GMT", Date=DATE), 200, 3600.0),
        (h(Expires="0", Date=DATE), 200, 0.0),  # invalid Expires: already expired
        (h(Last_Modified="Sat, 01 Nov 2025 02:00:00 GMT", Date=DATE), 200, 3600.0),  # 10% heuristic
        (h(Last_Modified="Sat, 01 Nov 2020 00:00:00 GMT", Date=DATE), 200, 86400.0),  # capped
        (h(Last_Modified="Sat, 01 Nov 2025 02:00:00 GMT", Date=DATE), 302, 0.0),  # no heuristic for 302
        (h(Date=DATE), 200, 0.0),
    ],
)
def test_lifetime_4_2_1(resp: tuple[tuple[str, str], ...], status: int, lifetime: float) -> None:
    assert freshness_lifetime(resp, P, status, T0) == lifetime


def test_ttl_overrides() -> None:
    assert freshness_lifetime(h(Cache_Control="max-age=5"), Policy(min_ttl=60), 200) == 60.0
    assert freshness_lifetime(h(Cache_Control="max-age=500"), Policy(max_ttl=60), 200) == 60.0


def test_current_age_4_2_3() -> None:
    # Date 10 s before the response arrived, Age 5 from upstream, 2 s request delay, 100 s resident.
    resp = h(Date=DATE, Age="5")
    assert current_age(resp, T0 + 8, T0 + 10, T0 + 110) == 110.0  # max(10, 5+2) + 100
    assert current_age(h(Age="bogus"), T0, T0, T0 + 3) == 3.0


@pytest.mark.parametrize(
    ("req", "resp", "fresh", "want"),
    [
        ((), h(), Freshness(60, 10), Use.FRESH),
        ((), h(Cache_Control="no-cache"), Freshness(60, 10), Use.REVALIDATE),
        (h(Cache_Control="no-cache"), h(), Freshness(60, 10), Use.REVALIDATE),
        (h(Pragma="no-cache"), h(), Freshness(60, 10), Use.REVALIDATE),
        (h(Cache_Control="max-age=5"), h(), Freshness(60, 10), Use.REVALIDATE),
        (h(Cache_Control="min-fresh=55"), h(), Freshness(60, 10), Use.REVALIDATE),
        ((), h(), Freshness(60, 70), Use.REVALIDATE),
        (h(Cache_Control="max-stale=20"), h(), Freshness(60, 70), Use.STALE_OK),
        (h(Cache_Control="max-stale=5"), h(), Freshness(60, 70), Use.REVALIDATE),
        (h(Cache_Control="max-stale"), h(Cache_Control="must-revalidate"), Freshness(60, 70), Use.REVALIDATE),
        ((), h(Cache_Control="stale-while-revalidate=30"), Freshness(60, 70), Use.STALE_WHILE_REVALIDATE),
        ((), h(Cache_Control="stale-while-revalidate=5"), Freshness(60, 70), Use.REVALIDATE),
        ((), h(Cache_Control="s-maxage=60, stale-while-revalidate=30"), Freshness(60, 70), Use.REVALIDATE),
    ],
)
def test_usable_4_and_5_2_1(
    req: tuple[tuple[str, str], ...], resp: tuple[tuple[str, str], ...], fresh: Freshness, want: Use
) -> None:
    assert usable(req, resp, fresh, P) is want


def test_stale_if_error_rfc5861() -> None:
    assert stale_if_error_allows((), h(Cache_Control="stale-if-error=60"), Freshness(10, 30), P)
    assert not stale_if_error_allows((), h(Cache_Control="stale-if-error=10"), Freshness(10, 30), P)
    assert stale_if_error_allows(h(Cache_Control="stale-if-error=60"), h(), Freshness(10, 30), P)
    assert not stale_if_error_allows((), h(Cache_Control="must-revalidate, stale-if-error=60"), Freshness(10, 30), P)


def test_merge_304_3_2() -> None:
    stored = h(ETag='"a"', Cache_Control="max-age=1", Content_Length="10", X_Old="1")
    merged = merge_304(stored, h(Cache_Control="max-age=100", Content_Length="0", Connection="close", X_New="2"))
    assert dict(merged) == {
        "ETag": '"a"',
        "Content-Length": "10",
        "X-Old": "1",
        "Cache-Control": "max-age=100",
        "X-New": "2",
    }


def test_strip_for_storage_3_1() -> None:
    resp = h(Connection="x-a", X_A="1", Keep_Alive="1", Cache_Control='private="x-b"', X_B="2", ETag='"e"')
    assert dict(strip_for_storage(resp, P)) == {"Cache-Control": 'private="x-b"', "ETag": '"e"'}


def test_invalidates_4_4() -> None:
    assert invalidates("POST", 201)
    assert invalidates("DELETE", 302)
    assert not invalidates("POST", 500)
    assert not invalidates("GET", 200)
