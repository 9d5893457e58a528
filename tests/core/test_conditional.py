"""A client's If-None-Match and If-Match as RFC 9110 8.8.3 writes entity-tags; what is not one is compared as it is
(nginx, Fastly), and a field that names nothing the cache can tell gets the whole answer (core.conditional)."""

from __future__ import annotations

import pytest

from edgecache.core.conditional import not_modified, precondition_failed, unreadable
from edgecache.core.headers import Headers

LM = "Sat, 01 Nov 2025 00:00:00 GMT"
IMS = ("If-Modified-Since", "Sun, 02 Nov 2025 00:00:00 GMT")  # later than LM: a 304 if it were asked


@pytest.mark.parametrize(
    ("value", "stored", "expected"),
    [
        ('"e1"', '"e1"', True),
        ('W/"e1"', '"e1"', True),  # weak comparison
        ('"x", W/"e1"', 'W/"e1"', True),
        ('"a,b"', '"a,b"', True),  # a comma inside a tag
        ('"abcdefü"', '"abcdefü"', True),  # obs-text
        ("*", '"e1"', True),
        ("*", None, True),
        ('"e2"', '"e1"', False),
        ("", '"e1"', False),  # an empty list names nothing
        # Not entity-tags: the same characters only.
        ("e1", '"e1"', False),
        ('"e1"', "e1", False),
        ("abcdef", "abcdef", True),  # an origin's unquoted tag, echoed
        ('w/"e1"', 'w/"e1"', True),
        ('w/"e1"', '"e1"', False),
        ('"e1', '"e1"', False),
        ('"e1" "e2"', '"e1"', False),  # no comma between two tags
    ],
)
def test_if_none_match(value: str, stored: str | None, expected: bool) -> None:
    request: Headers = (("If-None-Match", value), IMS)
    assert not_modified(request, stored, LM) is expected


@pytest.mark.parametrize(
    ("value", "stored", "unread"),
    [
        ('"e1"', '"e1"', False),
        ('"e2"', '"e1"', False),
        ("*", None, False),
        ("e1", '"e1"', True),  # 200, never the 304 a match would be (the origin answers 200 to it)
        ("e2", '"e1"', True),
        ("abcdef", "abcdef", False),  # matched: a 304
        ('"e1", e2', '"e1"', False),  # a member matched
        ("e1", None, True),
    ],
)
def test_an_unreadable_if_none_match_gets_no_304(value: str, stored: str | None, unread: bool) -> None:
    request: Headers = (("If-None-Match", value),)
    assert unreadable(request, stored) is unread
    if unread:
        assert not not_modified(request, stored, LM)
        assert not not_modified((*request, IMS), stored, LM)  # If-Modified-Since is ignored all the same (13.1.3)


@pytest.mark.parametrize(
    ("value", "stored", "failed", "unread"),
    [
        ('"e1"', '"e1"', False, False),
        ('"e2"', '"e1"', True, False),
        ('W/"e1"', 'W/"e1"', True, False),  # strong comparison: a weak tag matches nothing
        ("*", None, False, False),
        ("e1", '"e1"', False, True),  # not a 412: the whole answer
        ("e2", '"e1"', False, True),
        ("abcdef", "abcdef", False, False),
        ("e1", None, False, True),
    ],
)
def test_if_match(value: str, stored: str | None, failed: bool, unread: bool) -> None:
    request: Headers = (("If-Match", value),)
    assert (precondition_failed(request, stored, LM), unreadable(request, stored)) == (failed, unread)


def test_lines_of_one_field_are_one_list() -> None:
    request: Headers = (("If-None-Match", '"a"'), ("If-None-Match", '"e1"'))
    assert not_modified(request, '"e1"', None)
    assert not unreadable(request, '"e1"')
    assert unreadable((("If-None-Match", '"a"'), ("If-None-Match", "e1")), '"e2"')
