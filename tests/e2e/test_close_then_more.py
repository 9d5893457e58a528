"""A request with `Connection: close` followed in the same read by more bytes: the request is answered and the
connection closed, what came after it ignored (RFC 9112 9.6). aiohttp's parser refused the whole read with
`400 malformed request`, the request's own answer lost, for every request it answers (a body, `OPTIONS *`, every
one with the fast path off)."""

from __future__ import annotations

import pytest

from tests.conftest import Edge
from tests.origin import Origin
from tests.wire import exchange

MORE = b"GET /later HTTP/1.1\r\nHost: video.test\r\n\r\n"


def answers(raw: bytes) -> list[bytes]:
    """The status lines of the answers in `raw`, each framed by its Content-Length; nothing may follow the last."""
    lines = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        fields = head.split(b"\r\n")
        lines.append(fields[0])
        length = next(int(f.split(b":")[1]) for f in fields if f.lower().startswith(b"content-length:"))
        raw = rest[length:]
    return lines


@pytest.mark.parametrize("more", [MORE, b"junk", MORE + b"GET /later2 HTTP/1.1\r\n"], ids=["request", "junk", "two"])
async def test_options_asterisk_then_more(edge: Edge, origin: Origin, more: bytes) -> None:
    raw = await exchange(edge.port, b"OPTIONS * HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n" + more)
    assert answers(raw) == [b"HTTP/1.1 200 OK"], raw
    assert b"Allow: GET, HEAD, OPTIONS\r\n" in raw
    assert origin.seen == []


@pytest.mark.parametrize("more", [MORE, b"junk"], ids=["request", "junk"])
async def test_a_post_then_more(edge: Edge, origin: Origin, more: bytes) -> None:
    post = b"POST /p HTTP/1.1\r\nHost: video.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    raw = await exchange(edge.port, post + more)
    assert answers(raw) == [b"HTTP/1.1 201 Created"], raw
    assert raw.endswith(b"\r\n\r\nstored\n")
    assert [(s.method, s.path) for s in origin.seen] == [("POST", "/p")]
    assert origin.objects["/p"].data == b"abc"


async def test_a_chunked_post_then_more(edge: Edge, origin: Origin) -> None:
    post = b"POST /p HTTP/1.1\r\nHost: video.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw = await exchange(edge.port, post + b"3\r\nabc\r\n0\r\n\r\n" + MORE)
    assert answers(raw) == [b"HTTP/1.1 201 Created"], raw
    assert origin.objects["/p"].data == b"abc"
    assert [(s.method, s.path) for s in origin.seen] == [("POST", "/p")]


async def test_a_get_then_more(edge: Edge, origin: Origin) -> None:
    origin.put("/a", b"body of a")
    raw = await exchange(edge.port, b"GET /a HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n" + MORE)
    assert answers(raw) == [b"HTTP/1.1 200 OK"], raw
    assert raw.endswith(b"\r\n\r\nbody of a")
    assert dict(origin.hits) == {"/a": 1}


async def test_requests_before_the_closing_one_are_answered_too(edge: Edge, origin: Origin) -> None:
    origin.put("/a", b"body of a")
    keep = b"POST /p HTTP/1.1\r\nHost: video.test\r\nContent-Length: 3\r\n\r\nabc"
    get = b"GET /a HTTP/1.1\r\nHost: video.test\r\n\r\n"
    last = b"POST /q HTTP/1.1\r\nHost: video.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw = await exchange(edge.port, keep + get + last + b"2\r\nxy\r\n0\r\n\r\n" + MORE)
    assert answers(raw) == [b"HTTP/1.1 201 Created", b"HTTP/1.1 200 OK", b"HTTP/1.1 201 Created"], raw
    assert (origin.objects["/p"].data, origin.objects["/q"].data) == (b"abc", b"xy")
    assert [(s.method, s.path) for s in origin.seen] == [("POST", "/p"), ("GET", "/a"), ("POST", "/q")]
