"""core.closing: where the request that closes its connection ends, fed whole, byte by byte, and in every split
in two (h11's test_io habit); and every framing it does not follow passed on whole."""

from __future__ import annotations

import pytest

from edgecache.core.closing import START, Kind, Scan, scan

GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
CLOSE = b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
CHUNKED = (
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
)
NO_TRAILERS = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
HTTP10 = b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n"
HTTP10_OPEN = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
# Versions llhttp takes and either path refuses (505) and closes on, whatever the request asks (core.admit.version)
HTTP20 = b"GET /a HTTP/2.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
HTTP09 = b"HEAD /a HTTP/0.9\r\nContent-Length: 2\r\n\r\nab"
MORE = b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n"


def fed(pieces: list[bytes]) -> tuple[bytes, Scan]:
    """What is passed on of `pieces`, fed one at a time, and the state after them."""
    state, out = START, b""
    for piece in pieces:
        state, n = scan(state, piece)
        assert 0 <= n <= len(piece)
        out += piece[:n]
    return out, state


def every_way(data: bytes) -> list[list[bytes]]:
    return [[data], [data[i : i + 1] for i in range(len(data))]] + [[data[:i], data[i:]] for i in range(len(data))]


@pytest.mark.parametrize(
    "kept",
    [
        *(CLOSE, POST, CHUNKED, NO_TRAILERS, HTTP10, GET + POST, HTTP10_OPEN + GET + CLOSE, GET + GET + CHUNKED),
        *(GET + HTTP20, HTTP09),
    ],
    ids=[
        *("close", "post", "chunked", "no-trailers", "http10", "get-post", "http10-kept-open", "pipelined"),
        *("http20", "http09"),
    ],
)
@pytest.mark.parametrize("more", [MORE, b"junk", b"\r\n", MORE * 3])
def test_what_follows_the_closing_request_is_cut(kept: bytes, more: bytes) -> None:
    for pieces in every_way(kept + more):
        assert fed(pieces) == (kept, Scan(Kind.DONE)), pieces


@pytest.mark.parametrize(
    "data",
    [
        GET + GET,  # nothing closes: all passed on, waiting for the next head
        b"GET /a HTTP/1.1\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n" + MORE,
        b"CONNECT h:443 HTTP/1.1\r\nConnection: close\r\n\r\n" + MORE,
        b"GET /a HTTP/3.0\r\nConnection: close\r\n\r\n" + MORE,  # a version llhttp refuses: its 400
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc" + MORE,
        b"POST /p HTTP/1.1\r\nContent-Length: +3\r\nConnection: close\r\n\r\nabc" + MORE,
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + MORE,
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n" + MORE,
        b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + MORE,
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3 \r\nabc\r\n0\r\n\r\n" + MORE,
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabcd\r\n0\r\n\r\n" + MORE,
        b"GET /a HTTP/1.1\r\nConnection : close\r\n\r\n" + MORE,
        b"GET /a HTTP/1.1\r\nX: a\r\n folded\r\nConnection: close\r\n\r\n" + MORE,
        b"\r\nGET /a HTTP/1.1\r\nConnection: close\r\n\r\n" + MORE,
        b"GET /a HTTP/1.1\r\nX: " + b"x" * 17_000 + b"\r\nConnection: close\r\n\r\n" + MORE,
    ],
    ids=lambda d: d[:40].decode("latin-1"),
)
def test_framing_not_followed_is_passed_on_whole(data: bytes) -> None:
    for pieces in [[data], [data[i : i + 1] for i in range(len(data))], [data[:30], data[30:]]]:
        out, state = fed(pieces)
        assert out == data
        assert state.kind in (Kind.OFF, Kind.HEAD)


def test_a_body_is_never_held() -> None:
    head = b"POST /p HTTP/1.1\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n"
    state, n = scan(START, head + b"b" * 500_000)
    assert (n, state) == (len(head) + 500_000, Scan(Kind.BODY, b"", 500_000, True))
    state, n = scan(state, b"b" * 500_000 + MORE)
    assert (n, state) == (500_000, Scan(Kind.DONE))


BAD = b"GET * HTTP/1.1\r\nHo st: x\r\n\r\n"  # framed as any head: aiohttp's parser refuses it


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GET, [len(GET)]),
        (GET + GET + POST, [len(GET), 2 * len(GET), 2 * len(GET) + len(POST)]),
        (GET + CHUNKED + MORE, [len(GET), len(GET) + len(CHUNKED)]),  # nothing after the closing request
        (GET + GET[:10], [len(GET)]),  # a head begun is no end
        (GET + BAD + GET, [len(GET), len(GET) + len(BAD), 2 * len(GET) + len(BAD)]),
        (GET + b"\r\n", [len(GET)]),  # what llhttp takes between requests: no request
    ],
    ids=["one", "pipelined", "chunked-closes", "begun", "malformed-between", "blank-line"],
)
def test_where_each_request_ends_is_told(data: bytes, expected: list[int]) -> None:
    """The ends proxy.headguard feeds aiohttp each request apart by; the state and cut are the same with or without."""
    ends: list[int] = []
    assert scan(START, data, ends) == scan(START, data)
    assert ends == expected
