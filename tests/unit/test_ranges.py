"""RFC 9110 section 14 range maths: exact cases, then properties over arbitrary input."""

from __future__ import annotations

import email
import email.policy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.core.ranges import (
    ByteRange,
    ContentRange,
    Multi,
    NoRange,
    RangeSpec,
    Single,
    Unsatisfiable,
    content_range,
    format_content_range,
    if_range_allows,
    multipart_layout,
    parse_content_range,
    parse_range_header,
    plain_bounds,
    plain_range,
    player_value,
    resolve,
    slice_bounds,
    slice_indices,
    within,
)
from edgecache.proxy.rangecut import plain_value

R = ByteRange


@pytest.mark.parametrize(
    ("header", "length", "want"),
    [
        (None, 100, NoRange("absent or ignored")),
        ("bytes=0-9", 100, Single(R(0, 9))),
        ("bytes=90-", 100, Single(R(90, 99))),
        ("bytes=-10", 100, Single(R(90, 99))),
        ("bytes=-1000", 100, Single(R(0, 99))),
        ("bytes=50-1000", 100, Single(R(50, 99))),
        ("BYTES = 0-0", 100, Single(R(0, 0))),
        ("bytes=0-0, 10-19", 100, Multi((R(0, 0), R(10, 19)))),
        ("bytes=10-19,0-0", 100, Multi((R(10, 19), R(0, 0)))),  # in the order asked (RFC 9110 14.2)
        ("bytes=50-59,0-9,5-20,70-79,-1", 100, Multi((R(50, 59), R(0, 20), R(70, 79), R(99, 99)))),
        ("bytes=90-,20-29,0-9,85-89", 100, Multi((R(85, 99), R(20, 29), R(0, 9)))),  # merged: the first one's place
        ("bytes=0-10,5-20", 100, Single(R(0, 20))),  # overlapping ranges merge
        ("bytes=0-9,10-19", 100, Single(R(0, 19))),  # touching ranges merge
        ("bytes=0-1,,5-6", 100, Multi((R(0, 1), R(5, 6)))),  # empty list elements are tolerated
        ("bytes=100-", 100, Unsatisfiable(100)),
        ("bytes=-0", 100, Unsatisfiable(100)),
        ("bytes=200-300,-0", 100, Unsatisfiable(100)),
        ("bytes=200-300,0-1", 100, Single(R(0, 1))),  # unsatisfiable specs are dropped
        ("bytes=0-1", 0, Unsatisfiable(0)),
        ("bytes=5-2", 100, NoRange("absent or ignored")),
        ("bytes=abc", 100, NoRange("absent or ignored")),
        ("items=0-1", 100, NoRange("absent or ignored")),
        ("bytes=-", 100, NoRange("absent or ignored")),
        ("bytes=", 100, NoRange("absent or ignored")),
        ("bytes=1-2-3", 100, NoRange("absent or ignored")),
        ("bytes=" + "9" * 19 + "-", 100, NoRange("absent or ignored")),
        ("bytes=" + ",".join(["0-0"] * 65), 100, NoRange("absent or ignored")),  # too many ranges
        ("bytes=" + ",".join(["0-99"] * 20), 100, NoRange("ranges ask for more than the representation")),
    ],
)
def test_resolve(header: str | None, length: int, want: object) -> None:
    assert resolve(header, length) == want


def test_parse_specs() -> None:
    assert parse_range_header("bytes=1-2,-3,4-") == (RangeSpec(1, 2), RangeSpec(None, 3), RangeSpec(4, None))


LM = "Sat, 01 Nov 2025 00:00:00 GMT"
DATE = "Sat, 01 Nov 2025 00:01:00 GMT"  # a minute after LM: LM is a strong validator (RFC 9110 8.8.2.2)


@pytest.mark.parametrize(
    ("if_range", "etag", "lm", "date", "want"),
    [
        (None, '"a"', None, DATE, True),
        ('"a"', '"a"', None, DATE, True),
        ('"a"', '"b"', None, DATE, False),
        ('W/"a"', 'W/"a"', None, DATE, False),  # weak tags never match for If-Range
        ('"a"', 'W/"a"', None, DATE, False),
        (LM, None, LM, DATE, True),
        ("Sat, 01 Nov 2025 00:00:01 GMT", None, LM, DATE, False),
        ("garbage", None, LM, DATE, False),
        (LM, '"a"', None, DATE, False),
        # RFC 9110 13.1.5: a date matches only a strong Last-Modified; one dated within a minute of its Date (or
        # with no Date) may name two versions written in one second.
        (LM, None, LM, "Sat, 01 Nov 2025 00:00:59 GMT", False),
        (LM, None, LM, LM, False),
        (LM, None, LM, None, False),
    ],
)
def test_if_range(if_range: str | None, etag: str | None, lm: str | None, date: str | None, want: bool) -> None:
    assert if_range_allows(if_range, etag, lm, date) is want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("bytes 0-9/100", ContentRange(0, 9, 100)),
        ("bytes 0-9/*", ContentRange(0, 9, None)),
        ("bytes */100", ContentRange(None, None, 100)),
        ("bytes 9-0/100", None),
        ("bytes 0-100/100", None),
        ("bytes */*", None),
        ("bytes 0-9", None),
        ("items 0-9/100", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, want: ContentRange | None) -> None:
    assert parse_content_range(value) == want


def test_slices() -> None:
    assert list(slice_indices(R(0, 0), 10)) == [0]
    assert list(slice_indices(R(9, 10), 10)) == [0, 1]
    assert list(slice_indices(R(10, 29), 10)) == [1, 2]
    assert slice_bounds(2, 10, 25) == R(20, 24)


@given(st.text(max_size=200), st.integers(min_value=0, max_value=2**40))
def test_resolve_never_raises(header: str, length: int) -> None:
    resolve(header, length)
    resolve("bytes=" + header, length)


spec = st.one_of(
    st.tuples(st.integers(0, 5000), st.integers(0, 5000)).map(lambda t: f"{min(t)}-{max(t)}"),
    st.integers(0, 5000).map(lambda a: f"{a}-"),
    st.integers(0, 5000).map(lambda n: f"-{n}"),
)


@given(st.lists(spec, min_size=1, max_size=70), st.integers(min_value=0, max_value=4000))
def test_resolved_ranges_are_within_and_disjoint(specs: list[str], length: int) -> None:
    result = resolve("bytes=" + ",".join(specs), length)
    parts: tuple[ByteRange, ...] = ()
    if isinstance(result, Single):
        parts = (result.range,)
    elif isinstance(result, Multi):
        parts = result.ranges
        assert len(parts) >= 2
    for p in parts:
        assert 0 <= p.first <= p.last < length
    for a, b in itertools.pairwise(sorted(parts, key=lambda p: p.first)):
        assert a.last + 1 < b.first  # neither overlapping nor touching


@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(4096, 2**21))
def test_slices_tile_a_range_exactly(a: int, b: int, size: int) -> None:
    r = R(min(a, b), max(a, b))
    length = r.last + 1 + (a % 7)
    covered = []
    for i in slice_indices(r, size):
        s = slice_bounds(i, size, length)
        covered.append((max(s.first, r.first), min(s.last, r.last)))
    assert covered[0][0] == r.first
    assert covered[-1][1] == r.last
    for x, y in itertools.pairwise(covered):
        assert y[0] == x[1] + 1  # no gap, no overlap


@given(st.integers(1, 10**12), st.integers(0, 10**12))
def test_content_range_round_trip(length: int, first: int) -> None:
    first = first % length
    r = R(first, length - 1)
    assert parse_content_range(format_content_range(r, length)) == ContentRange(r.first, r.last, length)


@settings(max_examples=50)
@given(
    st.binary(min_size=10, max_size=3000),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=2, max_size=6),
)
def test_multipart_layout_parses_back(data: bytes, pairs: list[tuple[int, int]]) -> None:
    ranges = tuple(sorted({R(min(a, b) % len(data), max(a, b) % len(data)) for a, b in pairs}, key=lambda r: r.first))
    ranges = tuple(r for r in ranges if r.first <= r.last)
    layout = multipart_layout(ranges, len(data), "video/mp4", "XyZ")
    body = b"".join(pre + data[r.first : r.last + 1] for pre, r in layout.parts) + layout.epilogue
    assert len(body) == layout.content_length
    msg = email.message_from_bytes(
        f"Content-Type: {layout.content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    parts = list(msg.iter_parts())
    assert len(parts) == len(ranges)
    for part, r in zip(parts, ranges, strict=True):
        assert part["Content-Range"] == format_content_range(r, len(data))
        assert part.get_payload(decode=True) == data[r.first : r.last + 1]


@given(
    st.from_regex(r"[0-9]{1,19}", fullmatch=True),
    st.from_regex(r"[0-9]{0,19}", fullmatch=True),
)
def test_the_plain_form_reads_as_the_general_parse_reads_it(first: str, last: str) -> None:
    """parse_range_header reads `bytes=A-B` at once; the unit in capitals takes the general parse (case-blind)."""
    assert parse_range_header(f"bytes={first}-{last}") == parse_range_header(f"BYTES={first}-{last}")


@given(st.integers(0, 10**6), st.one_of(st.none(), st.integers(0, 10**6)), st.integers(0, 10**6))
def test_the_plain_bounds_are_what_the_general_parse_resolves(first: int, last: int | None, length: int) -> None:
    """plain_bounds (the fast path's cuts) and plain_range give the range the general parse resolves the same value
    to (BYTES in capitals takes it), or None where that is no Single; content_range writes what it would."""
    value = f"bytes={first}-{'' if last is None else last}"
    general = resolve(value.upper(), length)
    bounds = plain_bounds(value, length)
    if bounds is None:
        assert plain_range(value, length) is None
        assert not isinstance(general, Single)
    else:
        assert general == Single(R(*bounds))
        assert plain_range(value, length) == R(*bounds)
        assert content_range(*bounds, length) == format_content_range(R(*bounds), length)
        assert content_range(*bounds, length) == f"bytes {bounds[0]}-{bounds[1]}/{length}"


# Range values as a head holds them: blanks around, the plain form and its near misses, and any bytes
_RAW_VALUES = st.one_of(
    st.from_regex(rb"[ \t]{0,2}(bytes|BYTES|byte)=[0-9]{0,20}-[0-9]{0,20}(,[0-9]{0,3}-)?[ \t\r]{0,2}", fullmatch=True),
    st.binary(max_size=40),
)


@given(_RAW_VALUES, st.integers(-1, 10**20))
def test_a_players_value_reads_as_its_decoded_value_does(raw: bytes, length: int) -> None:
    """player_value (the fast path's cut of a new range: proxy.decide.Decider._cut) reads the value the way the
    three steps it stands in for do: a value of visible words (rangecut.plain_value), decoded without its blanks,
    and plain_bounds of that; None leaves the value to them."""
    read = player_value(raw)
    if read is None:
        return
    value, first, last = read
    assert plain_value(raw)
    assert value == raw.decode("ascii").strip(" \t")
    assert within(first, last, length) == plain_bounds(value, length)
    assert parse_range_header(value) == (RangeSpec(first, last),)
