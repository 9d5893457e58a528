from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.httpdate import parse_http_date

T = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", T),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", T),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", T),  # asctime
        ("sun, 06 nov 1994 08:49:37 gmt", T),  # case is forgiven
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun 06 Nov 1994 08:49:37 GMT", None),  # no comma
        ("Sun, 06 Nov 94 08:49:37 GMT", None),  # two-digit year in IMF-fixdate
        ("Sun, 06  Nov 1994 08:49:37 GMT", None),  # two spaces
        ("Sun, 06-Nov-1994 08:49:37 GMT", None),  # dashes
        ("Sun, 06 Nov 1994 08.49.37 GMT", None),  # periods
        ("Sun, 06 Nov 1994 8:49:37 GMT", None),  # one-digit hour
        ("Sun, 32 Nov 1994 08:49:37 GMT", None),
        ("0", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_http_date(value: str | None, want: float | None) -> None:
    assert parse_http_date(value) == want


@given(st.text(max_size=60))
def test_never_raises(value: str) -> None:
    parse_http_date(value)
