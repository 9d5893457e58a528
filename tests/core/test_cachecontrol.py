"""Cache-Control and Pragma parsing (RFC 9111 5.2, 5.4, 4.2.1, 1.2.2), one rule per row, section in the id."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.cachecontrol import CacheControl, parse_cache_control, parse_pragma_no_cache, valid_sf_directives
from edgecache.core.headers import Headers

MAX = 2**31


def cc(*values: str) -> CacheControl:
    return parse_cache_control(tuple(("Cache-Control", v) for v in values))


def want(**fields: object) -> CacheControl:
    return dataclasses.replace(CacheControl(), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param((), want(), id="absent"),
        pytest.param((",, ,",), want(), id="5.6.1-empty-members"),
        pytest.param(("max-age=60",), want(max_age=60), id="5.2.2.1-max-age"),
        pytest.param(('max-age="60"',), want(max_age=60), id="5.2-quoted-argument-accepted"),
        pytest.param(("MAX-Age=60",), want(max_age=60), id="5.2-names-case-insensitive"),
        pytest.param(("max-age=0060",), want(max_age=60), id="1.2.2-leading-zeros"),
        pytest.param(("max-age=abc",), want(max_age=0, invalid=("max-age",)), id="4.2.1-invalid-max-age-stale"),
        pytest.param(("max-age=-1",), want(max_age=0, invalid=("max-age",)), id="1.2.2-negative-invalid"),
        pytest.param(("max-age=1.5",), want(max_age=0, invalid=("max-age",)), id="1.2.2-fraction-invalid"),
        pytest.param(("max-age=",), want(max_age=0, invalid=("max-age",)), id="1.2.2-empty-invalid"),
        pytest.param(("max-age",), want(max_age=0, invalid=("max-age",)), id="5.2.2.1-argument-required"),
        pytest.param(("max-age=\u0661\u0662",), want(max_age=0, invalid=("max-age",)), id="1.2.2-ascii-digits-only"),
        pytest.param(("max-age=10, max-age=5",), want(max_age=5), id="4.2.1-duplicate-smallest"),
        pytest.param(("max-age=5", "max-age=10"), want(max_age=5), id="4.2.1-duplicate-across-lines"),
        pytest.param(("max-age=60, max-age=x",), want(max_age=0, invalid=("max-age",)), id="4.2.1-dup-invalid-1"),
        pytest.param(("max-age=x, max-age=60",), want(max_age=0, invalid=("max-age",)), id="4.2.1-dup-invalid-2"),
        pytest.param(("max-age=99999999999",), want(max_age=MAX), id="1.2.2-clamp"),
        pytest.param(("max-age=" + "9" * 5000,), want(max_age=MAX), id="1.2.2-clamp-5000-digits"),
        pytest.param(("s-maxage=30, max-age=60",), want(s_maxage=30, max_age=60), id="5.2.2.10-s-maxage"),
        pytest.param(("s-maxage=x",), want(invalid=("s-maxage",)), id="5.2.2.10-invalid-s-maxage"),
        pytest.param(("no-store",), want(no_store=True), id="5.2.2.5-no-store"),
        pytest.param(("no-cache",), want(no_cache=True), id="5.2.2.4-no-cache"),
        pytest.param(('no-cache=""',), want(no_cache=True), id="5.2.2.4-empty-list-is-unqualified"),
        pytest.param(
            ('no-cache="Set-Cookie, X-Foo"',),
            want(no_cache_fields=("set-cookie", "x-foo")),
            id="5.2.2.4-qualified-no-cache",
        ),
        pytest.param(("no-cache=x-a", 'no-cache="x-b"'), want(no_cache_fields=("x-a", "x-b")), id="5.2.2.4-union"),
        pytest.param(("private",), want(private=True), id="5.2.2.7-private"),
        pytest.param(('private="a", private="b"',), want(private_fields=("a", "b")), id="5.2.2.7-qualified-union"),
        pytest.param(('private="x-a, x-b", max-age=5',), want(private_fields=("x-a", "x-b"), max_age=5), id="5.6.4"),
        pytest.param(
            ("public, must-revalidate, proxy-revalidate, must-understand, immutable, no-transform",),
            want(
                public=True,
                must_revalidate=True,
                proxy_revalidate=True,
                must_understand=True,
                immutable=True,
                no_transform=True,
            ),
            id="5.2.2-flags",
        ),
        pytest.param(
            ("stale-while-revalidate=30, stale-if-error=60",),
            want(stale_while_revalidate=30, stale_if_error=60),
            id="rfc5861-windows",
        ),
        pytest.param(("stale-if-error=x",), want(invalid=("stale-if-error",)), id="rfc5861-invalid-window"),
        pytest.param(("max-stale",), want(max_stale_any=True), id="5.2.1.2-max-stale-any"),
        pytest.param(("max-stale=10, max-stale=20",), want(max_stale=10), id="5.2.1.2-max-stale-smallest"),
        pytest.param(("max-stale=x",), want(invalid=("max-stale",)), id="5.2.1.2-invalid-max-stale"),
        pytest.param(("min-fresh=5, min-fresh=10",), want(min_fresh=10), id="5.2.1.3-min-fresh-largest"),
        pytest.param(("only-if-cached",), want(only_if_cached=True), id="5.2.1.7-only-if-cached"),
        pytest.param(('community="UCI", foo=bar, max-age=5',), want(max_age=5), id="5.2.3-extensions-ignored"),
    ],
)
def test_parse_cache_control(values: tuple[str, ...], expected: CacheControl) -> None:
    assert cc(*values) == expected


def test_parse_reads_every_line_case_insensitively_5_2() -> None:
    headers: Headers = (("Cache-Control", "max-age=5"), ("X-Other", "no-store"), ("cache-control", "no-cache"))
    assert parse_cache_control(headers) == want(max_age=5, no_cache=True)


def test_parse_targeted_field_rfc9213() -> None:
    headers: Headers = (("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600"))
    assert parse_cache_control(headers, field="cdn-cache-control") == want(max_age=600)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param((("Pragma", "no-cache"),), True, id="5.4-pragma-no-cache"),
        pytest.param((("Pragma", "No-Cache"),), True, id="5.4-case-insensitive"),
        pytest.param((("Pragma", "x-foo, no-cache"),), True, id="5.4-in-a-list"),
        pytest.param((("Pragma", "x-foo"),), False, id="5.4-other-pragma"),
        pytest.param((("Pragma", "no-cache"), ("Cache-Control", "max-age=5")), False, id="5.4-cache-control-wins"),
        pytest.param((), False, id="absent"),
    ],
)
def test_parse_pragma_no_cache(headers: Headers, expected: bool) -> None:
    assert parse_pragma_no_cache(headers) is expected


@given(st.lists(st.text(max_size=80), max_size=4))
def test_parse_never_raises_and_deltas_stay_in_range(values: list[str]) -> None:
    parsed = cc(*values)
    for delta in (parsed.max_age, parsed.s_maxage, parsed.min_fresh, parsed.max_stale, parsed.stale_if_error):
        assert delta is None or 0 <= delta <= MAX
    valid_sf_directives(values)


@given(
    st.sampled_from(["max-age", "s-maxage", "min-fresh", "max-stale"]), st.text("0123456789", min_size=1, max_size=6000)
)
def test_long_digit_strings_never_raise_1_2_2(name: str, digits: str) -> None:
    # Python's int() refuses strings of over 4300 digits: the parser must clamp before converting.
    significant = digits.lstrip("0") or "0"
    expected = MAX if len(significant) > 10 else min(int(significant), MAX)
    assert getattr(cc(f"{name}={digits}"), name.replace("-", "_")) == expected
