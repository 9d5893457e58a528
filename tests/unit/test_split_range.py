"""rangecut.split_range: which heads the fast path cuts a single range for, and what it cuts. The Range line, If-Range
and obs-fold are now found in one regex pass; `_reference` is the earlier code (a find for each), kept here as the
rule the pass must give, over heads built from the lines and line ends that decide it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecache.proxy import headparse
from edgecache.proxy.rangecut import RANGE_VALUE_MAX, needs_strict_parser, split_range

_MAX_HEADERS, _MAX_FIELD_SIZE = headparse.LIMITS["max_headers"], headparse.LIMITS["max_field_size"]


def _reference(head: bytes) -> tuple[bytes, bytes] | None:
    lower = head.lower()
    at = lower.find(b"\r\nrange:")
    lines = head.count(b"\r\n")
    if at < 0 or lower.find(b"\r\nrange:", at + 8) >= 0 or b"\r\nif-range:" in lower:
        return None
    strict = head.count(b"\n") != lines or b"\r\n " in head or b"\r\n\t" in head
    if strict or lines - 2 > _MAX_HEADERS or len(head) > _MAX_FIELD_SIZE:
        return None
    end = head.find(b"\r\n", at + 8)
    if end - at - 8 > RANGE_VALUE_MAX:
        return None
    return head[at + 8 : end], head[:at] + head[end:]


LINES = st.sampled_from(
    [
        b"Host: v.test",
        b"Range: bytes=0-9",
        b"range:bytes=5-",
        b"RANGE: bytes=1-2, 4-5",
        b'If-Range: "e"',
        b"if-range:x",
        b"X-Range: 1",
        b"X-If-Range: 2",
        b" folded",
        b"\tfolded",
        b"Range: " + b"1" * RANGE_VALUE_MAX,
        b"Range: bytes=0-1\nX: y",
        b"",
    ]
)
ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r\n ", b"\r\n\t"])


@settings(max_examples=2000)
@given(st.lists(st.tuples(LINES, ENDS), max_size=8), st.integers(0, 110))
def test_split_range_cuts_as_the_finds_did(lines: list[tuple[bytes, bytes]], padding: int) -> None:
    head = b"GET /v HTTP/1.1\r\n" + b"".join(line + end for line, end in lines) + b"X: " + b"p" * padding + b"\r\n\r\n"
    assert split_range(head) == _reference(head)


@given(st.lists(st.tuples(LINES, ENDS), max_size=8))
def test_needs_strict_parser_is_bare_lf_or_obs_fold(lines: list[tuple[bytes, bytes]]) -> None:
    head = b"GET /v HTTP/1.1\r\n" + b"".join(line + end for line, end in lines) + b"\r\n"
    want = head.count(b"\n") != head.count(b"\r\n") or b"\r\n " in head or b"\r\n\t" in head
    assert needs_strict_parser(head) is want
    assert needs_strict_parser(head, head.count(b"\r\n")) is want


def test_a_plain_range_is_cut_and_the_rest_kept_in_order() -> None:
    head = b"GET /v HTTP/1.1\r\nHost: v.test\r\nrAnGe: bytes=3-7\r\nX: 1\r\n\r\n"
    assert split_range(head) == (b" bytes=3-7", b"GET /v HTTP/1.1\r\nHost: v.test\r\nX: 1\r\n\r\n")
    assert split_range(head.replace(b"X: 1", b"If-Range: x")) is None
    assert split_range(head.replace(b"X: 1", b"Range: bytes=1-2")) is None
    assert split_range(head.replace(b"X: 1", b" continued")) is None
    assert split_range(head.replace(b"X: 1\r\n", b"X: 1\n")) is None
