"""Shared-cache decisions (RFC 9111, RFC 5861): one rule per row, with the section in its id or comment."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.entry import ObjectMeta
from edgecache.core.freshness import (
    Freshness,
    Policy,
    StoreDecision,
    Use,
    answered_since,
    current_age,
    evaluate,
    freshness_lifetime,
    invalidates,
    merge_304,
    parse_age,
    revalidated_since,
    selects,
    stale_if_error_allows,
    storable,
    stored_use,
    strip_for_storage,
    usable,
)
from edgecache.core.headers import Headers

P = Policy()
DATE = "Sat, 01 Nov 2025 12:00:00 GMT"
T0 = 1761998400.0  # DATE as a timestamp
IN_1H = "Sat, 01 Nov 2025 13:00:00 GMT"
LM_10H = "Sat, 01 Nov 2025 02:00:00 GMT"  # 10 hours before DATE


def h(*pairs: str) -> Headers:
    """h("Name: value", ...) -> header tuple, in order, repeats kept."""
    out = []
    for pair in pairs:
        name, _, value = pair.partition(":")
        out.append((name, value.strip()))
    return tuple(out)


# --- storable (RFC 9111 3) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "req", "resp", "expected"),
    [
        pytest.param("GET", 200, (), h(), ("ok", True), id="3-default-cacheable-200"),
        pytest.param("HEAD", 200, (), h("Cache-Control: max-age=60"), ("method", False), id="3-head-not-stored"),
        pytest.param("POST", 200, (), h("Cache-Control: max-age=60"), ("method", False), id="3-post"),
        pytest.param("get", 200, (), h(), ("method", False), id="9110-9.1-method-case-sensitive"),
        pytest.param("GET", 100, (), h(), ("status", False), id="3-not-final"),
        pytest.param("GET", 304, (), h("Cache-Control: max-age=60"), ("status", False), id="4.3.4-304-merged"),
        pytest.param("GET", 600, (), h("Cache-Control: max-age=60"), ("status", False), id="3-status-unknown"),
        pytest.param("GET", 302, (), h(), ("no-freshness", False), id="3-302-no-explicit-freshness"),
        pytest.param("GET", 302, (), h("Cache-Control: max-age=60"), ("ok", True), id="3-302-max-age"),
        pytest.param("GET", 302, (), h("Cache-Control: s-maxage=60"), ("ok", True), id="3-302-s-maxage"),
        pytest.param("GET", 302, (), h(f"Expires: {IN_1H}"), ("ok", True), id="3-302-expires"),
        pytest.param("GET", 302, (), h("Cache-Control: public"), ("ok", True), id="3-302-public"),
        pytest.param("GET", 302, (), h("Cache-Control: no-cache"), ("no-freshness", False), id="3-no-cache-not-a-ttl"),
        pytest.param("GET", 500, (), h(), ("no-freshness", False), id="3-500"),
        pytest.param("GET", 404, (), h(), ("ok", True), id="15.1-404-heuristic"),
        pytest.param("GET", 206, (), h(), ("ok", True), id="3.4-206"),
        pytest.param("GET", 200, (), h("Cache-Control: no-store"), ("no-store", False), id="5.2.2.5-response"),
        pytest.param("GET", 200, h("Cache-Control: no-store"), h(), ("no-store", False), id="5.2.1.5-request"),
        pytest.param("GET", 200, (), h("Cache-Control: private"), ("private", False), id="5.2.2.7-private"),
        pytest.param("GET", 200, (), h('Cache-Control: private="x-a"'), ("ok", True), id="5.2.2.7-qualified"),
        pytest.param(
            "GET", 200, h("Authorization: x"), h("Cache-Control: max-age=60"), ("authorization", False), id="3.5"
        ),
        pytest.param("GET", 200, h("Authorization: x"), h("Cache-Control: public"), ("ok", True), id="3.5-public"),
        pytest.param("GET", 200, h("Authorization: x"), h("Cache-Control: s-maxage=5"), ("ok", True), id="3.5-smax"),
        pytest.param(
            "GET", 200, h("Authorization: x"), h("Cache-Control: must-revalidate"), ("ok", True), id="3.5-must-reval"
        ),
        pytest.param("GET", 200, (), h("Vary: *"), ("vary-star", False), id="4.1-vary-star"),
        pytest.param("GET", 200, (), h("Vary: Accept, *"), ("vary-star", False), id="4.1-vary-star-in-list"),
        pytest.param("GET", 200, (), h("Vary: Accept"), ("ok", True), id="4.1-vary-fields"),
        pytest.param("GET", 200, (), h("Set-Cookie: a=b"), ("set-cookie", False), id="policy-set-cookie"),
        pytest.param(
            "GET", 200, (), h("Cache-Control: no-store, must-understand"), ("ok", True), id="5.2.2.3-understood"
        ),
        pytest.param(
            "GET", 299, (), h("Cache-Control: no-store, must-understand"), ("must-understand", False), id="5.2.2.3-not"
        ),
        pytest.param(
            "GET", 200, h("Cache-Control: no-store"), h("Cache-Control: must-understand"), ("no-store", False),
            id="5.2.2.3-request-no-store-still-wins",
        ),
        pytest.param(
            "GET", 200, (), h("CDN-Cache-Control: max-age=60", "Cache-Control: private"), ("ok", True),
            id="rfc9213-targeted-field-overrides",
        ),
    ],
)  # fmt: skip
def test_storable_3(method: str, status: int, req: Headers, resp: Headers, expected: tuple[str, bool]) -> None:
    reason, store = expected
    assert storable(method, status, req, resp, P) == StoreDecision(store, reason)


def test_storable_set_cookie_when_the_site_allows_it() -> None:
    assert storable("GET", 200, (), h("Set-Cookie: a=b"), Policy(store_set_cookie=True)) == StoreDecision(True, "ok")


# --- freshness_lifetime (RFC 9111 4.2.1, 4.2.2) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resp", "status", "lifetime"),
    [
        pytest.param(h("Cache-Control: max-age=60, s-maxage=10"), 200, 10.0, id="5.2.2.10-s-maxage-beats-max-age"),
        pytest.param(h("Cache-Control: s-maxage=10", f"Expires: {IN_1H}", f"Date: {DATE}"), 200, 10.0, id="s>exp"),
        pytest.param(h("Cache-Control: s-maxage=x, max-age=60"), 200, 0.0, id="4.2.1-invalid-s-maxage-stale"),
        pytest.param(h("Cache-Control: max-age=60", f"Expires: {IN_1H}", f"Date: {DATE}"), 200, 60.0, id="max>exp"),
        pytest.param(h("Cache-Control: max-age=abc", f"Expires: {IN_1H}", f"Date: {DATE}"), 200, 0.0, id="4.2.1-bad"),
        pytest.param(h(f"Expires: {IN_1H}", f"Date: {DATE}"), 200, 3600.0, id="4.2.1-expires-minus-date"),
        pytest.param(h(f"Expires: {IN_1H}"), 200, 3000.0, id="4.2.1-expires-no-date-uses-response-time"),
        pytest.param(h(f"Expires: {DATE}", f"Date: {IN_1H}"), 200, 0.0, id="4.2.1-expires-in-the-past"),
        pytest.param(h("Expires: 0", f"Date: {DATE}"), 200, 0.0, id="5.3-invalid-expires-is-expired"),
        pytest.param(h(f"Expires: {IN_1H}", f"Expires: {IN_1H}", f"Date: {DATE}"), 200, 0.0, id="4.2.1-two-expires"),
        pytest.param(h("Expires: 0", f"Last-Modified: {LM_10H}", f"Date: {DATE}"), 200, 0.0, id="4.2.2-explicit-first"),
        pytest.param(h(f"Last-Modified: {LM_10H}", f"Date: {DATE}"), 200, 3600.0, id="4.2.2-heuristic-10pct"),
        pytest.param(h(f"Last-Modified: {LM_10H}"), 200, 3660.0, id="4.2.2-heuristic-no-date"),
        pytest.param(
            h("Last-Modified: Sat, 01 Nov 2020 00:00:00 GMT", f"Date: {DATE}"), 200, 86400.0, id="4.2.2-capped"
        ),
        pytest.param(h(f"Last-Modified: {LM_10H}", f"Date: {DATE}"), 302, 0.0, id="4.2.2-not-for-302"),
        pytest.param(
            h(f"Last-Modified: {LM_10H}", f"Date: {DATE}", "Cache-Control: public"), 302, 3600.0, id="4.2.2-public"
        ),
        pytest.param(h(f"Last-Modified: {IN_1H}", f"Date: {DATE}"), 200, 0.0, id="4.2.2-last-modified-in-future"),
        pytest.param(h(f"Date: {DATE}"), 200, 0.0, id="4.2.2-needs-last-modified"),
        pytest.param(h("CDN-Cache-Control: max-age=600", "Cache-Control: max-age=60"), 200, 600.0, id="rfc9213"),
        pytest.param(h("CDN-Cache-Control: max-age=600", "Expires: 0"), 200, 600.0, id="rfc9213-ignores-expires"),
    ],
)  # fmt: skip
def test_freshness_lifetime_4_2_1(resp: Headers, status: int, lifetime: float) -> None:
    assert freshness_lifetime(resp, P, status, T0 + 600) == lifetime


def test_heuristic_fraction_and_cap_are_policy_4_2_2() -> None:
    resp = h(f"Last-Modified: {LM_10H}", f"Date: {DATE}")
    assert freshness_lifetime(resp, Policy(heuristic_fraction=0.5), 200) == 18000.0
    assert freshness_lifetime(resp, Policy(heuristic_max=60.0), 200) == 60.0


@pytest.mark.parametrize(
    ("resp", "policy", "lifetime"),
    [
        pytest.param(h("Cache-Control: max-age=5"), Policy(min_ttl=60), 60.0, id="min-ttl-raises"),
        pytest.param(h("Cache-Control: max-age=500"), Policy(min_ttl=60), 500.0, id="min-ttl-floor-only"),
        pytest.param(h("Cache-Control: max-age=500"), Policy(max_ttl=60), 60.0, id="max-ttl-lowers"),
        pytest.param(h("Cache-Control: s-maxage=500"), Policy(max_ttl=60), 60.0, id="max-ttl-over-s-maxage"),
        pytest.param(h(), Policy(min_ttl=30, max_ttl=60), 30.0, id="both"),
    ],
)
def test_ttl_overrides(resp: Headers, policy: Policy, lifetime: float) -> None:
    assert freshness_lifetime(resp, policy, 200) == lifetime


# --- current_age (RFC 9111 4.2.3) ------------------------------------------------------------------------------


def test_current_age_4_2_3_worked_example() -> None:
    # Request sent 1 s after Date, response in 2 s later carrying Age: 10, then 60 s in the cache:
    # apparent_age = max(0, 3 - 0) = 3; response_delay = 2; corrected_age_value = 10 + 2 = 12;
    # corrected_initial_age = max(3, 12) = 12; resident_time = 60; current_age = 72.
    assert current_age(h(f"Date: {DATE}", "Age: 10"), T0 + 1, T0 + 3, T0 + 63) == 72.0


@pytest.mark.parametrize(
    ("resp", "request_time", "response_time", "now", "age"),
    [
        pytest.param(h(f"Date: {DATE}", "Age: 5"), T0 + 29, T0 + 30, T0 + 30, 30.0, id="apparent-age-wins"),
        pytest.param(h(f"Date: {IN_1H}", "Age: 5"), T0, T0 + 2, T0 + 2, 7.0, id="date-in-future-apparent-0"),
        pytest.param(h("Age: 5"), T0, T0 + 2, T0 + 12, 17.0, id="no-date"),
        pytest.param(h("Age: bogus"), T0, T0, T0 + 3, 3.0, id="5.1-invalid-age-ignored"),
        pytest.param(h("Age: -5"), T0, T0, T0 + 3, 3.0, id="5.1-negative-age-ignored"),
        pytest.param(h(), T0, T0, T0 - 5, 0.0, id="clock-stepped-back-not-younger"),
    ],
)
def test_current_age_4_2_3(resp: Headers, request_time: float, response_time: float, now: float, age: float) -> None:
    assert current_age(resp, request_time, response_time, now) == age


@pytest.mark.parametrize(
    ("resp", "age"),
    [
        pytest.param(h(), 0, id="absent"),
        pytest.param(h("Age: 7"), 7, id="5.1"),
        pytest.param(h("Age: 7, 100"), 7, id="5.1-list-first-member"),
        pytest.param(h("Age: 7", "Age: 100"), 7, id="5.1-first-line"),
        pytest.param(h("Age: x, 100"), 0, id="5.1-first-member-invalid-ignored"),
        pytest.param(h("Age: 1.5"), 0, id="5.1-fraction-ignored"),
        pytest.param(h("Age: 99999999999"), 2**31, id="1.2.2-clamp"),
        pytest.param(h("Age: " + "9" * 5000), 2**31, id="1.2.2-clamp-5000-digits"),
    ],
)
def test_parse_age_5_1(resp: Headers, age: int) -> None:
    assert parse_age(resp) == age


# --- Freshness / evaluate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fresh", "is_fresh", "staleness"),
    [
        pytest.param(Freshness(60, 10), True, 0.0, id="fresh"),
        pytest.param(Freshness(60, 60), False, 0.0, id="4.2-age-equal-lifetime-is-stale"),
        pytest.param(Freshness(60, 75), False, 15.0, id="stale"),
        pytest.param(Freshness(0, 0), False, 0.0, id="zero-lifetime"),
    ],
)
def test_freshness_4_2(fresh: Freshness, is_fresh: bool, staleness: float) -> None:
    assert (fresh.fresh, fresh.staleness) == (is_fresh, staleness)


def test_evaluate_combines_lifetime_and_age_4_2() -> None:
    resp = h(f"Date: {DATE}", "Cache-Control: max-age=100", "Age: 10")
    assert evaluate(resp, 200, T0, T0 + 1, T0 + 51, P) == Freshness(100.0, 61.0)
    assert evaluate(h(f"Expires: {IN_1H}"), 200, T0 + 600, T0 + 600, T0 + 700, P) == Freshness(3000.0, 100.0)


# --- usable (RFC 9111 4, 4.2.4, 5.2.1; RFC 5861 3) ---------------------------------------------------------------

FRESH = Freshness(60, 10)
STALE_10 = Freshness(60, 70)


@pytest.mark.parametrize(
    ("req", "resp", "fresh", "use"),
    [
        pytest.param((), h(), FRESH, Use.FRESH, id="4.2-fresh"),
        pytest.param((), h("Cache-Control: no-cache"), FRESH, Use.REVALIDATE, id="5.2.2.4-response-no-cache"),
        pytest.param((), h('Cache-Control: no-cache="x-a"'), FRESH, Use.FRESH, id="5.2.2.4-qualified-reusable"),
        pytest.param(h("Cache-Control: no-cache"), h(), FRESH, Use.REVALIDATE, id="5.2.1.4-request-no-cache"),
        pytest.param(h("Pragma: no-cache"), h(), FRESH, Use.REVALIDATE, id="5.4-pragma"),
        pytest.param(h("Pragma: no-cache", "Cache-Control: max-age=60"), h(), FRESH, Use.FRESH, id="5.4-cc-wins"),
        pytest.param(h("Cache-Control: max-age=5"), h(), FRESH, Use.REVALIDATE, id="5.2.1.1-max-age-exceeded"),
        pytest.param(h("Cache-Control: max-age=10"), h(), FRESH, Use.FRESH, id="5.2.1.1-max-age-equal-ok"),
        pytest.param(h("Cache-Control: max-age=0"), h(), Freshness(60, 0), Use.FRESH, id="5.2.1.1-age-0"),
        pytest.param(h("Cache-Control: min-fresh=55"), h(), FRESH, Use.REVALIDATE, id="5.2.1.3-min-fresh"),
        pytest.param(h("Cache-Control: min-fresh=50"), h(), FRESH, Use.FRESH, id="5.2.1.3-min-fresh-equal-ok"),
        pytest.param((), h(), STALE_10, Use.REVALIDATE, id="4.2.4-stale"),
        pytest.param(h("Cache-Control: max-stale=20"), h(), STALE_10, Use.STALE_OK, id="5.2.1.2-max-stale"),
        pytest.param(h("Cache-Control: max-stale=10"), h(), STALE_10, Use.STALE_OK, id="5.2.1.2-equal"),
        pytest.param(h("Cache-Control: max-stale=5"), h(), STALE_10, Use.REVALIDATE, id="5.2.1.2-too-stale"),
        pytest.param(h("Cache-Control: max-stale"), h(), STALE_10, Use.STALE_OK, id="5.2.1.2-any"),
        pytest.param(
            h("Cache-Control: max-stale"), h("Cache-Control: must-revalidate"), STALE_10, Use.REVALIDATE,
            id="5.2.2.2-must-revalidate",
        ),
        pytest.param(
            h("Cache-Control: max-stale"), h("Cache-Control: proxy-revalidate"), STALE_10, Use.REVALIDATE,
            id="5.2.2.8-proxy-revalidate",
        ),
        pytest.param(
            h("Cache-Control: max-stale"), h("Cache-Control: s-maxage=60"), STALE_10, Use.REVALIDATE,
            id="5.2.2.10-s-maxage-implies-proxy-revalidate",
        ),
        pytest.param(
            h("Cache-Control: max-stale"), (), Freshness(60, 60 + 86401), Use.REVALIDATE, id="policy-stale-ceiling"
        ),
        pytest.param(
            (), h("Cache-Control: stale-while-revalidate=30"), STALE_10, Use.STALE_WHILE_REVALIDATE,
            id="rfc5861-3-swr-window",
        ),
        pytest.param(
            (), h("Cache-Control: stale-while-revalidate=10"), STALE_10, Use.STALE_WHILE_REVALIDATE,
            id="rfc5861-3-swr-edge",
        ),
        pytest.param(
            (), h("Cache-Control: stale-while-revalidate=5"), STALE_10, Use.REVALIDATE, id="rfc5861-3-swr-past"
        ),
        pytest.param(
            (), h("Cache-Control: stale-while-revalidate=999999"), Freshness(0, 86401), Use.REVALIDATE,
            id="rfc5861-3-swr-capped-by-policy",
        ),
        pytest.param(
            (), h("Cache-Control: must-revalidate, stale-while-revalidate=30"), STALE_10, Use.REVALIDATE,
            id="rfc5861-3-swr-not-against-must-revalidate",
        ),
        pytest.param(
            (), h("Cache-Control: s-maxage=60, stale-while-revalidate=30"), STALE_10, Use.REVALIDATE,
            id="rfc5861-3-swr-not-against-s-maxage",
        ),
        pytest.param(
            h("Cache-Control: max-stale=20"), h("Cache-Control: stale-while-revalidate=30"), STALE_10, Use.STALE_OK,
            id="5.2.1.2-client-tolerance-first",
        ),
    ],
)  # fmt: skip
def test_usable_4_and_5_2_1(req: Headers, resp: Headers, fresh: Freshness, use: Use) -> None:
    assert usable(req, resp, fresh, P) is use


def test_usable_ceiling_is_policy() -> None:
    resp = h("Cache-Control: stale-while-revalidate=30")
    assert usable((), resp, STALE_10, Policy(max_stale_ceiling=5.0)) is Use.REVALIDATE


def test_a_response_asked_before_a_soft_purge_is_revalidated_however_fresh() -> None:
    fresh, resp = Freshness(3600, 10), h("Cache-Control: max-age=3600")
    assert stored_use((), resp, fresh, P, asked_at=100.0, soft_before=100.5) is Use.REVALIDATE
    assert stored_use((), resp, fresh, P, asked_at=100.5, soft_before=100.5) is Use.FRESH  # not before it
    assert stored_use(h("Cache-Control: no-cache"), resp, fresh, P, 100.5, 0.0) is Use.REVALIDATE  # usable()'s


# --- stale_if_error_allows (RFC 5861 4) -------------------------------------------------------------------------

STALE_30 = Freshness(10, 40)


@pytest.mark.parametrize(
    ("req", "resp", "fresh", "allowed"),
    [
        pytest.param((), h("Cache-Control: stale-if-error=60"), STALE_30, True, id="response-window"),
        pytest.param((), h("Cache-Control: stale-if-error=30"), STALE_30, True, id="response-window-edge"),
        pytest.param((), h("Cache-Control: stale-if-error=10"), STALE_30, False, id="response-window-past"),
        pytest.param(h("Cache-Control: stale-if-error=60"), h(), STALE_30, True, id="request-window"),
        pytest.param(
            h("Cache-Control: stale-if-error=10"), h("Cache-Control: stale-if-error=60"), STALE_30, True, id="either"
        ),
        pytest.param((), h(), STALE_30, False, id="no-window"),
        pytest.param(
            (), h("Cache-Control: must-revalidate, stale-if-error=60"), STALE_30, False, id="must-revalidate-504"
        ),
        pytest.param((), h("Cache-Control: proxy-revalidate, stale-if-error=60"), STALE_30, False, id="proxy-reval"),
        pytest.param((), h("Cache-Control: s-maxage=10, stale-if-error=60"), STALE_30, False, id="s-maxage"),
        pytest.param(
            h("Cache-Control: stale-if-error=60"), h("Cache-Control: must-revalidate"), STALE_30, False,
            id="request-cannot-override-must-revalidate",
        ),
        pytest.param((), h("Cache-Control: no-cache, stale-if-error=60"), STALE_30, False, id="9111-4.2.4-no-cache"),
        pytest.param(
            (), h("Cache-Control: stale-if-error=999999"), Freshness(0, 86401), False, id="policy-stale-ceiling"
        ),
    ],
)  # fmt: skip
def test_stale_if_error_rfc5861_4(req: Headers, resp: Headers, fresh: Freshness, allowed: bool) -> None:
    assert stale_if_error_allows(req, resp, fresh, P) is allowed


# --- selects (RFC 9111 4.3.4) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "fresh304", "expected"),
    [
        (h('ETag: "a"'), h('ETag: "a"'), True),
        (h('ETag: "a"'), h('ETag: "b"'), False),  # another strong validator: MUST NOT update
        (h('ETag: W/"a"'), h('ETag: "a"'), False),  # a strong one selects only the same strong one
        (h(f"Last-Modified: {LM_10H}"), h('ETag: "a"'), False),
        (h('ETag: "a"'), h('ETag: W/"a"'), True),  # a weak one: weak comparison
        (h('ETag: W/"a"'), h('ETag: W/"b"'), False),
        (h('ETag: "a"', f"Last-Modified: {LM_10H}"), h(f"Last-Modified: {LM_10H}"), True),
        (h('ETag: "a"', f"Last-Modified: {LM_10H}"), h(f"Last-Modified: {DATE}"), False),
        (h('ETag: "a"'), h("Cache-Control: max-age=10"), True),  # no validator: the response it validated
        (h('ETag: "a"'), h(f"Last-Modified: {DATE}"), True),  # none stored to compare with
    ],
)
def test_a_304_selects_only_the_stored_response_with_its_validator_4_3_4(
    stored: Headers, fresh304: Headers, expected: bool
) -> None:
    assert selects(stored, fresh304) is expected


# --- merge_304 (RFC 9111 3.2, 4.3.4) ----------------------------------------------------------------------------


def test_merge_304_replaces_fields_present_keeps_others_3_2() -> None:
    stored = h('ETag: "a"', "Cache-Control: max-age=1", "Content-Length: 10", "X-Old: 1", f"Date: {DATE}")
    fresh304 = h("Cache-Control: max-age=100", "Content-Length: 0", "Connection: close", "X-New: 2", f"Date: {IN_1H}")
    assert merge_304(stored, fresh304) == h(
        'ETag: "a"', "Content-Length: 10", "X-Old: 1", "Cache-Control: max-age=100", "X-New: 2", f"Date: {IN_1H}"
    )


def test_merge_304_replaces_every_line_of_a_repeated_field_3_2() -> None:
    stored = h("Link: <a>", "Link: <b>", "X-Keep: 1")
    assert merge_304(stored, h("Link: <c>")) == h("X-Keep: 1", "Link: <c>")


@pytest.mark.parametrize(
    ("fresh304", "expected"),
    [
        pytest.param(h("Content-Range: bytes 0-1/2"), h("Content-Length: 10"), id="3.2-content-range-ignored"),
        pytest.param(h("Keep-Alive: 5", "Transfer-Encoding: chunked"), h("Content-Length: 10"), id="3.1-hop-by-hop"),
        pytest.param(h("Connection: x-a", "X-A: 1"), h("Content-Length: 10"), id="3.1-connection-named"),
        pytest.param(h("Proxy-Authentication-Info: x"), h("Content-Length: 10"), id="3.1-proxy-fields"),
        pytest.param(
            h('Cache-Control: private="x-a"', "X-A: 1"),
            h("Content-Length: 10", 'Cache-Control: private="x-a"'),
            id="3.1-private-named",
        ),
    ],
)
def test_merge_304_exceptions_3_2(fresh304: Headers, expected: Headers) -> None:
    assert merge_304(h("Content-Length: 10"), fresh304) == expected


def test_merge_304_takes_the_304s_age_or_none_5_1() -> None:
    """Age is the time since the response was made or validated at the origin (5.1): a copy a parent cache answered
    (a peer's, Age 50) and the origin then confirmed ages from that 304, not from the parent's Age on, which kept it
    50 s old for ever: a viewer's max-age=10 then revalidated it with the origin at every request."""
    stored = h('ETag: "a"', "Age: 50", "Cache-Control: max-age=3600")
    assert merge_304(stored, h('ETag: "a"', f"Date: {DATE}")) == h(
        "Cache-Control: max-age=3600", 'ETag: "a"', f"Date: {DATE}"
    )
    assert merge_304(stored, h("Age: 7")) == h('ETag: "a"', "Cache-Control: max-age=3600", "Age: 7")


def test_merge_304_drops_stored_fields_the_new_directives_name_3_1() -> None:
    stored = h("X-A: old", "Cache-Control: max-age=1")
    assert merge_304(stored, h('Cache-Control: no-cache="x-a"')) == h('Cache-Control: no-cache="x-a"')


# --- strip_for_storage (RFC 9111 3.1) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resp", "policy", "kept"),
    [
        pytest.param(
            h("Connection: x-a", "X-A: 1", "Keep-Alive: 1", "Upgrade: h2c", "ETag: e"), P, h("ETag: e"), id="3.1-hop"
        ),
        pytest.param(
            h("Proxy-Authenticate: x", "Proxy-Authentication-Info: y", "ETag: e"), P, h("ETag: e"), id="3.1-proxy"
        ),
        pytest.param(
            h('Cache-Control: private="x-b"', "X-B: 2", "ETag: e"), P, h('Cache-Control: private="x-b"', "ETag: e"),
            id="5.2.2.7-private-named",
        ),
        pytest.param(
            h('Cache-Control: no-cache="X-C"', "x-c: 3", "ETag: e"), P, h('Cache-Control: no-cache="X-C"', "ETag: e"),
            id="5.2.2.4-no-cache-named",
        ),
        pytest.param(h("Set-Cookie: a=b", "ETag: e"), P, h("ETag: e"), id="policy-set-cookie-dropped"),
        pytest.param(
            h("Set-Cookie: a=b", "ETag: e"), Policy(store_set_cookie=True), h("Set-Cookie: a=b", "ETag: e"),
            id="policy-set-cookie-kept",
        ),
        pytest.param(h("Age: 5", f"Date: {DATE}"), P, h("Age: 5", f"Date: {DATE}"), id="4.2.3-age-kept"),
    ],
)  # fmt: skip
def test_strip_for_storage_3_1(resp: Headers, policy: Policy, kept: Headers) -> None:
    assert strip_for_storage(resp, policy) == kept


# --- invalidates (RFC 9111 4.4) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("POST", 201, True),
        ("PUT", 204, True),
        ("DELETE", 302, True),
        ("PATCH", 200, True),
        ("POST", 399, True),
        ("POST", 400, False),  # 4.4: only non-error responses invalidate
        ("POST", 500, False),
        ("POST", 100, False),
        ("GET", 200, False),  # safe methods never invalidate
        ("HEAD", 200, False),
        ("OPTIONS", 200, False),
        ("TRACE", 200, False),
    ],
)
def test_invalidates_4_4(method: str, status: int, expected: bool) -> None:
    assert invalidates(method, status) is expected


# --- never raises on arbitrary input ------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    ["Cache-Control", "CDN-Cache-Control", "Pragma", "Expires", "Date", "Last-Modified", "Age", "Vary", "Connection"]
)
_HEADERS = st.lists(st.tuples(_NAMES, st.text(max_size=60)), max_size=6).map(tuple)
_TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(_HEADERS, _HEADERS, _TIMES, _TIMES, st.integers(100, 599))
def test_decisions_never_raise(req: Headers, resp: Headers, lifetime: float, age: float, status: int) -> None:
    fresh = Freshness(lifetime, age)
    assert usable(req, resp, fresh, P) in set(Use)
    stale_if_error_allows(req, resp, fresh, P)
    storable("GET", status, req, resp, P)
    got = evaluate(resp, status, T0, T0 + 1, T0 + 2, P)
    assert got.lifetime >= 0
    assert got.age >= 0
    strip_for_storage(resp, P)
    merge_304(resp, req)


# --- answered_since: another worker's miss answers this one (proxy.revalidating) -----------------------------

_CAME = ObjectMeta(200, (("Cache-Control", "max-age=3600"), ("ETag", '"v1"')), 10, '"v1"', False, T0, T0, 2**20)
_MISSED = T0 + 100.0  # when this worker's miss began; the other's answer came 0.1 s after


@pytest.mark.parametrize(
    ("age", "req", "expected"),
    [
        # The origin's answer to a fill in flight when this one began: joined, whatever the request asked.
        (None, h(), True),
        (None, h("Cache-Control: no-cache"), True),
        # A previous owner's copy (Age 50), judged for another request: only as a stored answer is.
        ("50", h(), True),
        ("50", h("Cache-Control: max-age=100"), True),
        ("50", h("Cache-Control: no-cache"), False),
        ("50", h("Cache-Control: max-age=10"), False),
        ("50", h("Pragma: no-cache"), False),
    ],
)
def test_answered_since(age: str | None, req: Headers, expected: bool) -> None:
    headers = (*_CAME.headers, *((("Age", age),) if age is not None else ()))
    stored = replace(_CAME, headers=headers, request_time=_MISSED - 0.1, response_time=_MISSED + 0.1)
    assert answered_since(stored, req, P, 0.0, _MISSED, _MISSED + 0.5) is expected


# --- revalidated_since: another worker's revalidation answers this one (proxy.revalidating) -------------------

_COPY = ObjectMeta(200, (("Cache-Control", "max-age=60"), ("ETag", '"v1"')), 10, '"v1"', False, T0, T0, 2**20, (), "t1")
_ASKED = T0 + 100.0  # when this worker's revalidation began: the copy it holds was stale (60 s)


@pytest.mark.parametrize(
    ("stored", "req", "soft_before", "expected"),
    [
        # Refreshed by a 304 that came after this revalidation began: joined, whatever the request asked.
        (replace(_COPY, request_time=_ASKED - 0.1, response_time=_ASKED + 0.1), h(), 0.0, True),
        (
            replace(_COPY, request_time=_ASKED - 0.1, response_time=_ASKED + 0.1),
            h("Cache-Control: no-cache"),
            0.0,
            True,
        ),
        # Refreshed before it began: only a copy fresh for this request answers it.
        (replace(_COPY, request_time=_ASKED - 10, response_time=_ASKED - 10), h(), 0.0, True),
        (replace(_COPY, request_time=_ASKED - 10, response_time=_ASKED - 10), h("Cache-Control: no-cache"), 0.0, False),
        (
            replace(_COPY, request_time=_ASKED - 10, response_time=_ASKED - 10),
            h("Cache-Control: max-age=5"),
            0.0,
            False,
        ),
        (replace(_COPY, request_time=_ASKED - 90, response_time=_ASKED - 90), h(), 0.0, False),  # stale again
        # Asked of the origin before a soft purge of the object: the purged answer.
        (replace(_COPY, request_time=_ASKED - 0.1, response_time=_ASKED + 0.1), h(), _ASKED, False),
        # The copy this worker holds, unrefreshed, or another copy: no answer.
        (_COPY, h(), 0.0, False),
        (replace(_COPY, token="t2", request_time=_ASKED, response_time=_ASKED + 0.1), h(), 0.0, False),
        (replace(_COPY, version='"v2"', request_time=_ASKED, response_time=_ASKED + 0.1), h(), 0.0, False),
    ],
)
def test_revalidated_since(stored: ObjectMeta, req: Headers, soft_before: float, expected: bool) -> None:
    assert revalidated_since(stored, _COPY, req, P, soft_before, _ASKED, _ASKED + 0.5) is expected
