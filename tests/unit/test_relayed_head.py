"""The head a node writes for an upstream's answer it passes on (encode.relayed over core.forward.relayed_fields):
exact bytes for the fields a relay must drop, join, add or keep."""

from __future__ import annotations

import pytest

from edgecache.core.forward import relayed_fields
from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import encode

DATE = b"Fri, 04 Dec 2026 18:00:00 GMT"
MINE = "edgecache; fwd=miss; detail=peer"


def test_hop_by_hop_and_connection_named_fields_are_dropped_via_and_cache_status_joined() -> None:
    upstream = (
        ("Content-Length", "3"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-SECRET", "1"),
        ("Via", "1.1 a"),
        ("Keep-Alive", "timeout=5"),
        ("cache-status", "origin; hit"),
        ("ETag", '"x"'),
        ("VIA", "1.1 b"),
        ("Cache-Status", "mid; fwd=miss"),
        ("Transfer-Encoding", "chunked"),
    )
    assert relayed_fields(upstream, MINE) == [
        ("Content-Length", "3"),
        ("ETag", '"x"'),
        ("Via", "1.1 a, 1.1 b, 1.1 edgecache"),
        ("Cache-Status", f"origin; hit, mid; fwd=miss, {MINE}"),
    ]


def test_a_connection_token_naming_via_drops_nothing_it_joins() -> None:
    upstream = (("Connection", "Via"), ("Via", "1.1 a"), ("Date", "x"))
    assert relayed_fields(upstream, MINE) == [("Date", "x"), ("Via", "1.1 a, 1.1 edgecache"), ("Cache-Status", MINE)]


@pytest.mark.parametrize("status", [204, 304])
def test_no_length_where_no_body_may_follow(status: int) -> None:
    upstream = (("Content-Length", "10"), ("Date", "d"), ("Server", "s"))
    head, chunked, keep = encode.relayed(status, "R", upstream, MINE, "GET", DATE, KeepAlive.OPEN)
    assert head == (
        f"HTTP/1.1 {status} R\r\nDate: d\r\nServer: s\r\nVia: 1.1 edgecache\r\nCache-Status: {MINE}\r\n\r\n".encode()
    )
    assert (chunked, keep) == (False, KeepAlive.OPEN)


def test_unknown_length_is_chunked_dated_and_served_and_not_typed() -> None:
    head, chunked, keep = encode.relayed(200, "OK", (("X-A", "1"),), MINE, "GET", DATE, KeepAlive.OPEN)
    assert head == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nVia: 1.1 edgecache\r\nCache-Status: "
        + MINE.encode()
        + b"\r\nTransfer-Encoding: chunked\r\nDate: "
        + DATE
        + b"\r\n"
        + b"Server: edgecache\r\n"
        + b"\r\n"
    )
    assert (chunked, keep) == (True, KeepAlive.OPEN)


def test_a_typed_answer_of_known_length_to_http10_keeps_its_fields() -> None:
    upstream = (("content-type", "video/mp4"), ("content-length", "0"), ("date", "d"), ("server", "s"))
    head, chunked, keep = encode.relayed(200, "OK", upstream, MINE, "GET", DATE, KeepAlive.OPEN_10)
    assert head == (
        b"HTTP/1.0 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: 0\r\ndate: d\r\nserver: s\r\n"
        b"Via: 1.1 edgecache\r\nCache-Status: " + MINE.encode() + b"\r\nConnection: keep-alive\r\n\r\n"
    )
    assert (chunked, keep) == (False, KeepAlive.OPEN_10)


def test_a_field_that_cannot_be_passed_on_gives_no_head() -> None:
    head, _, _ = encode.relayed(200, "OK", (("X-A", "caf\u20ac"),), MINE, "GET", DATE, KeepAlive.OPEN)
    assert head is None


def test_fields_a_later_connection_field_names_are_dropped_and_not_counted_as_present() -> None:
    # The names are lowered in one pass, before the Connection field is met: what it names is dropped from the
    # fields before it too, and from the names encode.relayed frames by (its Content-Length gone, the body is
    # chunked; its Content-Type gone, none is added).
    upstream = (
        ("Content-Type", "video/mp4"),
        ("content-length", "4"),
        ("Date", "d"),
        ("Server", "s"),
        ("Connection", "close, CONTENT-TYPE,Content-Length"),
    )
    head, chunked, keep = encode.relayed(200, "OK", upstream, MINE, "GET", DATE, KeepAlive.OPEN)
    assert head == (
        b"HTTP/1.1 200 OK\r\nDate: d\r\nServer: s\r\nVia: 1.1 edgecache\r\nCache-Status: "
        + MINE.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert (chunked, keep) == (True, KeepAlive.OPEN)
