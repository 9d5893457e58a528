"""Request bodies: forwarded byte for byte, and a client that stalls its body cannot hold the origin pool.

aiohttp's server decompresses request bodies by default: a gzip body reached the origin inflated, still labelled
Content-Encoding: gzip and cut to the client's Content-Length. And 260 clients that sent a body's first byte and
stopped held every origin connection: each uncached GET then waited for one and got 504.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import Edge, make_config, start_edge
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.samples import sample_value
from tests.wire import exchange, read_answer

ANSWER = 10  # seconds: a bound on every wait here, never a measure of speed
PAYLOAD = b"".join(b"event %d: the same words again and again\n" % i for i in range(2000))
OBJECT = b"an object the origin serves to GET\n"
# The stop's wait for handlers still running: here only aiohttp's, reading on (its lingering_time, 10 s) what is
# left of a body the edge answered (408, 504) before it all came, for a client that has gone.
DRAIN = 0.5


def reply(request: RawRequest) -> RawReply:
    if request.method == "GET":
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(OBJECT)}\r\nCache-Control: max-age=60\r\n\r\n"
        return head.encode() + OBJECT, False
    text = b"got %d bytes\n" % len(request.body)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text) + text, False


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


def post_head(path: str, *fields: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: video.test", "Connection: close", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def dechunk(raw: bytes) -> bytes:
    out, rest = b"", raw
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2 :]


ENCODINGS = {"gzip": gzip.compress, "deflate": zlib.compress}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
async def test_an_encoded_body_with_a_length_reaches_the_origin_as_sent(
    raw_edge: Edge, raw_origin: RawOrigin, encoding: str
) -> None:
    sent = ENCODINGS[encoding](PAYLOAD)
    fields = (f"Content-Encoding: {encoding}", f"Content-Length: {len(sent)}", "Content-Type: text/plain")
    raw = await exchange(raw_edge.port, post_head("/upload", *fields) + sent)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\ngot %d bytes\n" % len(sent))
    (seen,) = raw_origin.seen
    assert seen.body == sent
    assert (seen.header("Content-Encoding"), seen.header("Content-Length")) == (encoding, str(len(sent)))
    assert seen.header("Transfer-Encoding") is None


@pytest.mark.parametrize("encoding", list(ENCODINGS))
async def test_an_encoded_chunked_body_reaches_the_origin_chunked_as_sent(
    raw_edge: Edge, raw_origin: RawOrigin, encoding: str
) -> None:
    sent = ENCODINGS[encoding](PAYLOAD)
    fields = (f"Content-Encoding: {encoding}", "Transfer-Encoding: chunked")
    raw = await exchange(raw_edge.port, post_head("/upload", *fields) + chunked(sent, 1000))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    (seen,) = raw_origin.seen
    assert dechunk(seen.body) == sent  # chunk sizes are the edge's own; the bytes in them are the client's
    assert (seen.header("Content-Encoding"), seen.header("Transfer-Encoding")) == (encoding, "chunked")
    assert seen.header("Content-Length") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_body_without_a_content_type_reaches_the_origin_without_one(
    raw_edge: Edge, raw_origin: RawOrigin, method: str
) -> None:
    """aiohttp's client labels every POST, PUT and PATCH it sends without a Content-Type as
    application/octet-stream: the origin was told the client sent a type it never named (RFC 9110 8.3: a
    recipient may then sniff the type, or assume octet-stream; it was not the edge's to decide)."""
    for body in (PAYLOAD, b""):
        fields = (f"Content-Length: {len(body)}",)
        raw = await exchange(raw_edge.port, post_head("/upload", *fields).replace(b"POST", method.encode(), 1) + body)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.endswith(b"\r\n\r\ngot %d bytes\n" % len(body))
    assert [(s.method, s.body, s.header("Content-Type")) for s in raw_origin.seen] == [
        (method, PAYLOAD, None),
        (method, b"", None),
    ]


async def test_a_body_length_reaches_the_origin_in_its_plain_spelling(raw_edge: Edge, raw_origin: RawOrigin) -> None:
    """The client's Content-Length field went on as written, which another parser than llhttp may read otherwise
    (core.forward._length): now the length the edge read and framed the body by."""
    for spelling in ("0010", "000000000000000000010"):
        raw = await exchange(raw_edge.port, post_head("/upload", f"Content-Length: {spelling}") + b"0123456789")
        assert raw.endswith(b"\r\n\r\ngot 10 bytes\n"), raw
    assert [(s.header("Content-Length"), s.body) for s in raw_origin.seen] == [("10", b"0123456789")] * 2


def body_timeouts() -> float:
    return sample_value("edgecache_request_body_timeouts_total") or 0.0


async def stall(edge: Edge, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST that promises 1,000 body bytes, sends one, and stops."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(post_head(path, "Content-Length: 1000") + b"x")
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_stalled_bodies_hold_only_their_own_connections(
    raw_origin: RawOrigin, tmp_path: Path, fast_path: bool
) -> None:
    """More stalled bodies than both pools: an uncached GET is still answered from the origin, and each stalled
    client gets 408 once its body has been silent for body_timeout, its origin connection closed."""
    config = make_config(tmp_path / "c", [raw_origin.url])
    origin = replace(config.origin, connect_timeout=5.0, max_connections=2, body_connections=2, body_timeout=0.5)
    config = replace(config, origin=origin, fast_path=fast_path, drain=DRAIN)
    before = body_timeouts()
    async with start_edge(config) as edge:
        clients = [await stall(edge, f"/upload-{i}") for i in range(4)]
        try:
            async with asyncio.timeout(ANSWER):
                await raw_origin.wait_until(lambda: raw_origin.receiving == 2)  # the pool for bodies is full
                status, _, body = await edge.get("/object")
            assert (status, body) == (200, OBJECT)
            assert raw_origin.hits["/object"] == 1
            for reader, _ in clients:  # the two queued for a connection get theirs, and stall in turn
                async with asyncio.timeout(ANSWER):
                    head = await reader.readuntil(b"\r\n\r\n")
                    reason = await reader.readline()
                assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), head
                assert reason == b"request body stalled: nothing for 0.5 s\n"
            async with asyncio.timeout(ANSWER):
                await raw_origin.wait_until(lambda: raw_origin.receiving == 0)
        finally:
            for _, writer in clients:
                writer.close()
    assert [r.path for r in raw_origin.seen] == ["/object"]  # no cut body reached the origin as a whole one
    assert body_timeouts() - before == 4


async def test_a_client_expecting_100_continue_is_told_to_send_its_body(raw_edge: Edge, raw_origin: RawOrigin) -> None:
    """RFC 9110 10.1.1: a client that sent `Expect: 100-continue` waits for a 100 before it sends its body (curl
    waits 1 s, others until their own timeout). The edge sent nothing until the body came, so every such upload
    waited out the client's timer, and a client that waits for good was answered 408 after body_timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_edge.port)
    try:
        writer.write(post_head("/upload", "Expect: 100-continue", "Content-Length: 5"))
        async with asyncio.timeout(ANSWER):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            answer = await reader.read(-1)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\ngot 5 bytes\n")
    assert raw_origin.hits["/upload"] == 1
    assert raw_origin.seen[0].body == b"hello"
    assert raw_origin.seen[0].header("expect") is None  # the edge answered the expectation itself


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_an_origin_that_stops_reading_a_body_times_out(tmp_path: Path, fast_path: bool) -> None:
    """aiohttp starts a request's read timeout only once its body is sent: an origin that took the head and read
    no further (stuck, overloaded) held the pass-through, its client and a connection of the body pool for good.
    Not taking the body is not answering: a 504 once it has taken nothing for read_timeout."""
    heads: list[bytes] = []
    hold = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await hold.wait()  # never reads the body, never answers
        writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = make_config(tmp_path / "c", [f"http://127.0.0.1:{port}"])
    config = replace(config, origin=replace(config.origin, read_timeout=0.5), fast_path=fast_path, drain=DRAIN)

    async def send(writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(256):
                writer.write(b"x" * 2**18)
                await writer.drain()
        except ConnectionError:
            pass  # answered and closed before the whole body went

    try:
        async with start_edge(config) as edge:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            writer.write(post_head("/upload", f"Content-Length: {256 * 2**18}"))
            sending = asyncio.ensure_future(send(writer))
            try:
                async with asyncio.timeout(ANSWER):
                    status, _, body = await read_answer(reader)
            finally:
                sending.cancel()
                writer.transport.abort()  # what is still buffered is never sent
            assert (status, body) == (504, b"origin failed: site videos: timed out\n")
            assert len(heads) == 1
    finally:
        hold.set()
        server.close()
        await server.wait_closed()
