"""Every body shape an origin can produce, sent twice through a miss, a hit, a revalidation and a pass-through.

aiohttp hands every body-less response one shared reader that, once read to its end, answers "empty, not done"
forever without awaiting: the second 204 a node read spun its event loop at 100% and it never answered again.
So each shape is asked for twice on every path, and the node must still answer a plain hit afterwards. The origin
is a RawOrigin: it writes exact bytes (1xx heads, trailers, a body ended by closing the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from multidict import CIMultiDict

from tests.conftest import Edge, make_config, start_edge
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import fast_path_outcomes

FRESH = "public, max-age=3600"
STALE = "public, max-age=0, must-revalidate"  # every later request revalidates
ETAG = '"v1"'
# A spinning loop cannot time itself out: pytest-timeout interrupts it (TIMEOUT), and then these bounded waits
# fail the test at once, instead of the client session's 5 minutes.
TIMEOUT = 30
HOST = {"Host": "video.test"}
ANSWER = 10


@dataclass(frozen=True)
class Shape:
    name: str
    status_line: str
    fields: tuple[str, ...]  # besides Cache-Control and ETag
    wire_body: bytes  # as framed on the wire (never sent to HEAD)
    status: int  # what the client gets
    body: bytes  # what the client gets
    close: bool = False
    before: bytes = b""  # interim (1xx) responses written before the final one

    @property
    def sized(self) -> bool:
        return any(f.startswith("Content-Length:") for f in self.fields)


def _final(length: int) -> tuple[str, ...]:
    return ("Content-Type: text/plain", f"Content-Length: {length}")


SHAPES = [
    Shape("no-content", "HTTP/1.1 204 No Content", (), b"", 204, b""),
    # A 204 ends at its head whatever its fields say (RFC 9112 6.3 rule 1), a Content-Length (which RFC 9110 8.6
    # forbids it) too: read as the length of its body, it was stored as a 5-byte object whose body never came, and
    # every GET was a 502 after three origin requests.
    Shape("no-content-sized", "HTTP/1.1 204 No Content", ("Content-Length: 5",), b"", 204, b""),
    Shape("length-0", "HTTP/1.1 200 OK", _final(0), b"", 200, b""),
    Shape("chunked-empty", "HTTP/1.1 200 OK", ("Transfer-Encoding: chunked",), b"0\r\n\r\n", 200, b""),
    Shape(
        "chunked-trailers",
        "HTTP/1.1 200 OK",
        ("Transfer-Encoding: chunked", "Trailer: X-Checksum"),
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 5eb63bbb\r\n\r\n",
        200,
        b"hello world",
    ),
    Shape(
        "close-delimited",
        "HTTP/1.1 200 OK",
        ("Content-Type: text/plain", "Connection: close"),
        b"a body that ends when the connection does",
        200,
        b"a body that ends when the connection does",
        close=True,
    ),
    Shape(
        "100-continue",
        "HTTP/1.1 200 OK",
        _final(15),
        b"after continue\n",
        200,
        b"after continue\n",
        before=b"HTTP/1.1 100 Continue\r\n\r\n",
    ),
    Shape(
        "103-early-hints",
        "HTTP/1.1 200 OK",
        _final(18),
        b"after early hints\n",
        200,
        b"after early hints\n",
        before=b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ),
]
BY_NAME = {s.name: s for s in SHAPES}
PLAIN = b"a plain object, answered from the cache\n"
NOT_MODIFIED = f"HTTP/1.1 304 Not Modified\r\nETag: {ETAG}\r\nCache-Control: {STALE}\r\n\r\n".encode()


def _encode(shape: Shape, method: str, cache_control: str) -> RawReply:
    fields = [shape.status_line, *shape.fields, f"Cache-Control: {cache_control}", f"ETag: {ETAG}"]
    head = ("\r\n".join(fields) + "\r\n\r\n").encode()
    return shape.before + head + (b"" if method == "HEAD" else shape.wire_body), shape.close


def reply(request: RawRequest) -> RawReply:
    """Paths are /<shape>/<route>: "fresh" is cached an hour, "stale" revalidated every time; /304/... answers a
    request carrying our validator with 304 and any other with a small 200; /plain is an ordinary object."""
    _, name, route = [*request.path.split("/"), "", ""][:3]
    if name == "plain":
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PLAIN)}\r\nCache-Control: {FRESH}\r\n\r\n".encode()
        return head + (b"" if request.method == "HEAD" else PLAIN), False
    if name == "private":  # a 200 with a body and no Content-Type, never stored
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PLAIN)}\r\nCache-Control: private\r\n\r\n".encode()
        return head + (b"" if request.method == "HEAD" else PLAIN), False
    if name == "missing":  # a 404 with a body and no Content-Type
        head = f"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nCache-Control: {FRESH}\r\n\r\n".encode()
        return head + (b"" if request.method == "HEAD" else b"gone\n"), False
    if name == "304":
        if request.header("If-None-Match") == ETAG:
            return NOT_MODIFIED, False
        return _encode(replace(BY_NAME["length-0"], fields=_final(5), wire_body=b"v1 ok"), request.method, STALE)
    return _encode(BY_NAME[name], request.method, STALE if route == "stale" else FRESH)


@pytest.fixture
async def raw_origin() -> AsyncIterator[RawOrigin]:
    o = RawOrigin(reply)
    await o.start()
    yield o
    await o.stop()


@pytest.fixture(params=["fast", "framework"])
async def raw_edge(raw_origin: RawOrigin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = replace(make_config(tmp_path / "cache", [raw_origin.url]), fast_path=request.param == "fast")
    async with start_edge(config) as e:
        yield e


async def settle(edge: Edge) -> None:
    """Until every fill the edge started has ended and its writes are done. A fill outlives the answer it feeds
    by a few disk writes, and a request made meanwhile joins it instead of asking the origin: hit counts would
    depend on timing."""
    async with asyncio.timeout(ANSWER):
        fills = list(edge.node.engine._tasks)
        if fills:
            await asyncio.wait(fills)
        await edge.node.engine.flush()


async def ask(edge: Edge, method: str, path: str, data: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    url, fields = edge.url + path, {"Host": "video.test", **headers}
    async with asyncio.timeout(ANSWER), edge.session.request(method, url, headers=fields, data=data) as r:
        answer = r.status, await r.read()
    await settle(edge)
    return answer


async def ask_head(edge: Edge, path: str, **headers: str) -> tuple[int, CIMultiDict[str]]:
    url, fields = edge.url + path, {"Host": "video.test", **headers}
    async with asyncio.timeout(ANSWER), edge.session.head(url, headers=fields) as r:
        assert await r.read() == b""
        answer = r.status, CIMultiDict(r.headers)
    await settle(edge)
    return answer


async def assert_still_serving(edge: Edge, origin: RawOrigin) -> None:
    for _ in range(2):
        assert await ask(edge, "GET", "/plain/") == (200, PLAIN)
    assert origin.hits["/plain/"] == 1


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("path", ["/plain/", "/missing/", "/missing/head-first", "/private/", "/plain/passed"])
async def test_a_head_carries_the_fields_of_the_get_of_an_untyped_answer(
    raw_edge: Edge, raw_origin: RawOrigin, path: str
) -> None:
    """RFC 9110 9.3.2: a HEAD's answer has the fields the GET's would. A stored answer without Content-Type gets
    none on a GET or a HEAD (proxy.exact: aiohttp's server gave the GET application/octet-stream, and the HEAD once
    none), a stored 404's and 200's alike, on a hit or a miss."""
    edge, (status, body) = raw_edge, (404, b"gone\n") if path.startswith("/missing/") else (200, PLAIN)
    # Not stored: a private answer, and a pass (the request's no-store); each is the origin's every time.
    uncached, asked = path in ("/private/", "/plain/passed"), {**HOST}
    if path == "/plain/passed":
        asked["Cache-Control"] = "no-store"

    async def fields(method: str) -> dict[str, str]:
        async with asyncio.timeout(ANSWER), edge.session.request(method, edge.url + path, headers=asked) as r:
            assert (r.status, await r.read()) == (status, b"" if method == "HEAD" else body)
            return {k: v for k, v in r.headers.items() if k not in ("Date", "Age", "Cache-Status")}

    methods = ["HEAD", "GET", "HEAD"] if path.endswith("head-first") else ["GET", "HEAD", "GET", "HEAD"]
    answers = [await fields(method) for method in methods]
    assert all(a == answers[0] for a in answers), answers
    assert "Content-Type" not in answers[0], answers[0]
    heads = [seen.method for seen in raw_origin.seen if seen.path == path and seen.method == "HEAD"]
    if uncached:  # each HEAD is the origin's answer to a HEAD
        assert heads == ["HEAD", "HEAD"]
    else:
        assert raw_origin.hits[path] == 1


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", [s.name for s in SHAPES])
async def test_each_body_shape_twice_through_every_path(raw_edge: Edge, raw_origin: RawOrigin, name: str) -> None:
    shape, edge, origin = BY_NAME[name], raw_edge, raw_origin
    expected = (shape.status, shape.body)

    # A miss, then a hit: one origin request.
    for _ in range(2):
        assert await ask(edge, "GET", f"/{name}/fresh") == expected
    assert origin.hits[f"/{name}/fresh"] == 1

    # A miss, then two revalidations that get the whole shape again (the origin ignores the validator). A 200 of
    # unknown length is first stored as not whole, so its first revalidation asks for one slice; the whole answer
    # of unknown length that comes back makes that fill one of the whole object, which the client is served from.
    for _ in range(3):
        assert await ask(edge, "GET", f"/{name}/stale") == expected
    assert origin.hits[f"/{name}/stale"] == 3
    validators = [r.header("If-None-Match") for r in origin.seen if r.path == f"/{name}/stale"]
    assert validators.count(ETAG) == 2

    # Pass-through: a POST, and a GET the client will not let us store.
    for _ in range(2):
        assert await ask(edge, "POST", f"/{name}/post", data=b"ping") == expected
        assert await ask(edge, "GET", f"/{name}/nostore", **{"Cache-Control": "no-store"}) == expected
    assert origin.hits[f"/{name}/post"] == 2
    assert origin.hits[f"/{name}/nostore"] == 2
    assert [r.body for r in origin.seen if r.path == f"/{name}/post"] == [b"ping", b"ping"]

    await assert_still_serving(edge, origin)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", [s.name for s in SHAPES])
async def test_each_body_shape_answers_head_twice(raw_edge: Edge, raw_origin: RawOrigin, name: str) -> None:
    """HEAD through the cache and passed through (the origin gets HEAD and sends a head only: for a chunked or
    close-delimited shape, no body at all).

    A HEAD miss fills the first slice with a ranged GET. An answer without Content-Length makes that fill one of
    the whole object, which answers the HEAD (its length not yet known); the filled entry answers the second."""
    shape, edge, origin = BY_NAME[name], raw_edge, raw_origin
    before = fast_path_outcomes()["handed_off"]
    for i in range(2):
        status, headers = await ask_head(edge, f"/{name}/fresh")
        assert status == shape.status
        if shape.status == 200 and (shape.sized or i > 0):
            assert headers["Content-Length"] == str(len(shape.body))
        else:
            assert "Content-Length" not in headers
            assert "Transfer-Encoding" not in headers
    methods = [r.method for r in origin.seen if r.path == f"/{name}/fresh"]
    assert methods == ["GET"]
    assert fast_path_outcomes()["handed_off"] == before  # with the fast path off, nothing is counted

    for _ in range(2):
        status, _ = await ask_head(edge, f"/{name}/nostore", **{"Cache-Control": "no-store"})
        assert status == shape.status
    assert [r.method for r in origin.seen if r.path == f"/{name}/nostore"] == ["HEAD", "HEAD"]

    await assert_still_serving(edge, origin)


@pytest.mark.timeout(TIMEOUT)
async def test_not_modified_twice_through_revalidation_and_pass_through(raw_edge: Edge, raw_origin: RawOrigin) -> None:
    edge, origin = raw_edge, raw_origin
    # Revalidations answered 304: the stored body is served each time.
    for _ in range(3):
        assert await ask(edge, "GET", "/304/stale") == (200, b"v1 ok")
    assert origin.hits["/304/stale"] == 3
    assert [r.header("If-None-Match") for r in origin.seen if r.path == "/304/stale"] == [None, ETAG, ETAG]

    # The client's own validator with nothing stored: passed through, and the 304 passed back.
    for _ in range(2):
        assert await ask(edge, "GET", "/304/conditional", **{"If-None-Match": ETAG}) == (304, b"")
        status, _ = await ask_head(edge, "/304/conditional", **{"If-None-Match": ETAG})
        assert status == 304
    assert origin.hits["/304/conditional"] == 4

    await assert_still_serving(edge, origin)


def hints_only(request: RawRequest) -> RawReply:
    """An interim answer, and then nothing: the origin holds the connection without its final answer."""
    if request.path == "/plain/":
        return reply(request)
    return b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n", False


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("fast", [True, False])
async def test_an_origin_that_stalls_after_an_interim_answer_times_out(tmp_path: Path, fast: bool) -> None:
    """aiohttp stops a connection's read timeout after every answer without a body, an interim (1xx) one too: an
    origin that sent 103 Early Hints and then nothing held the fill, its clients and every later request of the
    object for good. The read timeout runs until the final answer's head: a 504 at each request."""
    origin = RawOrigin(hints_only)
    await origin.start()
    try:
        config = replace(make_config(tmp_path / "cache", [origin.url]), fast_path=fast)
        config = replace(config, origin=replace(config.origin, read_timeout=0.5))
        async with start_edge(config) as edge:
            for n in (1, 2):
                status, body = await ask(edge, "GET", "/hints")
                assert (status, origin.hits["/hints"]) == (504, n)
                assert body == b"origin failed: site videos: timed out\n"
            await assert_still_serving(edge, origin)
    finally:
        await origin.stop()


# Answers whose bytes cannot be taken as a body (proxy.origin._unreadable), and how the 502 names each:
UNREADABLE: dict[str, tuple[RawReply, bytes]] = {
    # Nothing a node sends an origin asks to switch protocols (Upgrade is hop-by-hop): a 101 was relayed, and the
    # client's connection stayed open after it with nothing on it, for good.
    "switches": (
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi", False),
        b"answered 101 ",
    ),
    # aiohttp, never decompressing, removes the chunked coding only (RFC 9112 6.1): a gzip transfer coding stayed
    # applied, and the coded bytes were stored and served as the object's, with no Content-Encoding saying so.
    "coded": (
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", True),
        b"answered with a transfer coding",
    ),
}


def unreadable(request: RawRequest) -> RawReply:
    if request.path == "/plain/":
        return reply(request)
    return UNREADABLE[request.path.strip("/")][0]


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("kind", sorted(UNREADABLE))
async def test_an_origin_answer_that_is_no_body_is_a_502(tmp_path: Path, fast: bool, kind: str) -> None:
    origin = RawOrigin(unreadable)
    await origin.start()
    try:
        config = replace(make_config(tmp_path / "cache", [origin.url]), fast_path=fast)
        async with start_edge(config) as edge:
            for n in (1, 2):
                status, body = await ask(edge, "GET", f"/{kind}")
                assert (status, origin.hits[f"/{kind}"]) == (502, n)
                assert body.startswith(b"origin failed: site videos: " + UNREADABLE[kind][1])
            await assert_still_serving(edge, origin)
    finally:
        await origin.stop()
