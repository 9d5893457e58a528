from __future__ import annotations

import pytest

from edgecache.core import entry
from edgecache.core.conditional import not_modified, precondition_failed
from edgecache.core.entry import ObjectMeta, judge, version_of
from edgecache.core.ranges import ByteRange

ASK = ByteRange(1048576, 2097151)


def test_version_prefers_strong_etag() -> None:
    lm, date = ("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT"), ("Date", "Mon, 01 Dec 2025 00:00:00 GMT")
    assert version_of((("ETag", '"abc"'), ("Last-Modified", "x")), 10) == 'e:"abc"'
    assert version_of((("ETag", 'W/"abc"'), lm, date), 10) == 'l:Sat, 01 Nov 2025 00:00:00 GMT:10:W/"abc"'
    assert version_of((("ETag", 'W/"abc"'),), 10) is None  # a weak tag alone names no bytes
    assert version_of((lm, date), None) is None
    assert version_of((), 10) is None


def test_a_last_modified_names_a_version_only_when_it_is_strong() -> None:
    """RFC 9110 8.8.2.2: well before the Date (STRONG_DATE_GAP); else two versions made within that second share it,
    and their slices are never combined (15.3.7.3)."""
    lm = ("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT")
    assert version_of((lm, ("Date", "Sat, 01 Nov 2025 00:01:00 GMT")), 10) == "l:Sat, 01 Nov 2025 00:00:00 GMT:10"
    assert version_of((lm, ("Date", "Sat, 01 Nov 2025 00:00:59 GMT")), 10) is None
    assert version_of((lm, ("Date", "Sat, 01 Nov 2025 00:00:00 GMT"), ("ETag", 'W/"a"')), 10) is None
    assert version_of((lm,), 10) is None  # no Date: nothing to judge it by
    assert version_of((("Last-Modified", "x"), ("Date", "Mon, 01 Dec 2025 00:00:00 GMT")), 10) is None


@pytest.mark.parametrize(
    ("status", "headers", "asked", "want"),
    [
        (206, (("Content-Range", "bytes 1048576-2097151/5000000"),), ASK, entry.Partial(1048576, 2097151, 5000000)),
        (206, (("Content-Range", "bytes 1048576-1999999/2000000"),), ASK, entry.Partial(1048576, 1999999, 2000000)),
        (200, (("Content-Length", "10"),), ASK, entry.Whole(10)),
        (200, (), None, entry.Whole(None)),
        (304, (), None, entry.NotModified()),
        (404, (("Content-Length", "3"),), ASK, entry.Other(3)),
        (204, (("Content-Length", "5"),), None, entry.Other(None)),  # a 204 ends at its head (RFC 9112 6.3)
        (204, (("Content-Length", "x"),), None, entry.Other(None)),
        (
            206,
            (("Content-Range", "bytes 0-1048575/5000000"),),
            ASK,
            entry.Refused("206 for bytes 0-1048575, asked for 1048576-2097151"),
        ),
        (
            206,
            (("Content-Range", "bytes 1048576-2000000/5000000"),),
            ASK,
            entry.Refused("206 for bytes 1048576-2000000, asked for 1048576-2097151"),
        ),
        (
            206,
            (("Content-Range", "bytes 1048576-2097151/*"),),
            ASK,
            entry.Refused("206 without a usable Content-Range"),
        ),
        (206, (), ASK, entry.Refused("206 without a usable Content-Range")),
        # The whole representation in a 206 to a request without Range is the whole body; any other part is refused
        (206, (("Content-Range", "bytes 0-1/2"), ("Content-Length", "2")), None, entry.Partial(0, 1, 2)),
        (206, (("Content-Range", "bytes 1-1/2"),), None, entry.Refused("206 to a request without Range")),
        (206, (("Content-Range", "bytes 0-0/2"),), None, entry.Refused("206 to a request without Range")),
        (206, (("Content-Range", "bytes 0-1/*"),), None, entry.Refused("206 to a request without Range")),
        (206, (), None, entry.Refused("206 to a request without Range")),
        (
            206,
            (("Content-Range", "bytes 0-1/2"), ("Content-Length", "3")),
            None,
            entry.Refused("Content-Length disagrees with Content-Range"),
        ),
        (200, (("Content-Length", "1"), ("Content-Length", "2")), ASK, entry.Refused("conflicting Content-Length")),
        (200, (("Content-Length", "-1"),), ASK, entry.Refused("invalid Content-Length")),
        (
            206,
            (("Content-Range", "bytes 1048576-2097151/5000000"), ("Content-Length", "5")),
            ASK,
            entry.Refused("Content-Length disagrees with Content-Range"),
        ),
    ],
)
def test_judge(status: int, headers: tuple[tuple[str, str], ...], asked: ByteRange | None, want: object) -> None:
    assert judge(status, headers, asked) == want


def test_meta_round_trip_and_damage() -> None:
    m = ObjectMeta(200, (("ETag", '"x"'),), 3000000, 'e:"x"', False, 1.0, 2.0, 1048576, ("accept-encoding",))
    assert ObjectMeta.from_bytes(m.to_bytes()) == m
    assert m.slice_count == 3
    assert m.slice_length(2) == 3000000 - 2 * 1048576
    assert ObjectMeta.from_bytes(b"{not json") is None
    assert ObjectMeta.from_bytes(b'{"status": 200}') is None


def test_stored_headers_drop_framing_and_hop_by_hop() -> None:
    h = (
        ("Content-Length", "5"),
        ("Connection", "x-foo"),
        ("X-Foo", "1"),
        ("Transfer-Encoding", "chunked"),
        ("ETag", '"a"'),
        ("Keep-Alive", "5"),
    )
    assert entry.stored_headers(h) == (("ETag", '"a"'),)


def test_conditionals() -> None:
    assert not_modified((("If-None-Match", '"a", W/"b"'),), 'W/"b"', None)
    assert not_modified((("If-None-Match", "*"),), '"a"', None)
    assert not not_modified((("If-None-Match", '"c"'),), '"a"', "Sat, 01 Nov 2025 00:00:00 GMT")
    ims = (("If-Modified-Since", "Sun, 02 Nov 2025 00:00:00 GMT"),)
    assert not_modified(ims, None, "Sat, 01 Nov 2025 00:00:00 GMT")
    assert not not_modified(ims, None, "Mon, 03 Nov 2025 00:00:00 GMT")
    assert not not_modified((("If-Modified-Since", "garbage"),), None, "Sat, 01 Nov 2025 00:00:00 GMT")
    assert precondition_failed((("If-Match", '"b"'),), '"a"', None)
    assert not precondition_failed((("If-Match", '"a"'),), '"a"', None)
    assert precondition_failed((("If-Match", '"a"'),), 'W/"a"', None)
    ius = (("If-Unmodified-Since", "Sun, 02 Nov 2025 00:00:00 GMT"),)
    assert precondition_failed(ius, None, "Mon, 03 Nov 2025 00:00:00 GMT")
    assert not precondition_failed(ius, None, "Sat, 01 Nov 2025 00:00:00 GMT")
    assert not precondition_failed(ius, '"a"', None)  # no modification date: the field is ignored (RFC 9110 13.1.4)


def _copy(headers: tuple[tuple[str, str], ...], length: int, token: str, status: int = 200) -> ObjectMeta:
    version = version_of(headers, length)
    assert version is not None
    return ObjectMeta(status, headers, length, version, False, 1.0, 2.0, 1048576, token=token)


OLD_LM = (("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT"), ("Date", "Mon, 01 Dec 2025 00:00:00 GMT"))
NEW_LM = (("Last-Modified", "Sun, 02 Nov 2025 00:00:00 GMT"), ("Date", "Mon, 01 Dec 2025 00:00:00 GMT"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (_copy((("ETag", '"x"'),), 10, "t1"), _copy((("ETag", '"x"'),), 10, "t1"), True),  # one copy
        (_copy((("ETag", '"x"'), *OLD_LM), 10, "t1"), _copy((("ETag", '"x"'), *OLD_LM), 10, "t2"), True),
        (_copy((("ETag", '"x"'),), 10, "t1"), _copy((("ETag", '"x"'),), 11, "t2"), False),  # another length
        (_copy((("ETag", '"x"'),), 10, "t1"), _copy((("ETag", '"x"'),), 10, "t2", 404), False),  # another status
        (_copy((("ETag", '"x"'), *OLD_LM), 10, "t1"), _copy((("ETag", '"x"'), *NEW_LM), 10, "t2"), False),
        (_copy((("ETag", 'W/"x"'), *OLD_LM), 10, "t1"), _copy((("ETag", 'W/"x"'), *OLD_LM), 10, "t2"), False),
        (_copy(OLD_LM, 10, "t1"), _copy(OLD_LM, 10, "t2"), False),  # Last-Modified alone names no bytes
    ],
)
def test_only_a_strong_etag_makes_two_copies_the_same_bytes(a: ObjectMeta, b: ObjectMeta, same: bool) -> None:
    assert entry.same_bytes(a, b) is same
    assert entry.same_bytes(b, a) is same
