"""A client that sends its requests and then shuts down its sending side (`nc -N`, `shutdown(SHUT_WR)`) gets
every answer, then the edge closes: hits (memory and disk), misses, pass-through and errors, on the fast path and
after the fast path handed the connection to aiohttp, twice each on fresh connections.

Before, only a fast-path hit answered at once was sent: everything else saw the socket closed under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.proxy import headguard
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin

SMALL = bytes(range(256)) * 40  # 10 KiB
BIG = bytes((i * 13 + i // 241) % 256 for i in range(2 * 2**20 + 777))  # 3 slices of 1 MiB


async def half_closed(edge: Edge, data: bytes) -> bytes:
    """Send `data`, shut down the sending side, and read until the edge closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


def responses(raw: bytes) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Split raw bytes into (status line, fields, body) by Content-Length; nothing may be left over."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"a head without its end: {head[:200]!r}"
        status, *lines = head.split(b"\r\n")
        fields = dict(line.decode().split(": ", 1) for line in lines)
        n = int(fields["Content-Length"])
        out.append((status, fields, raw[:n]))
        assert len(raw) >= n, "a body cut short"
        raw = raw[n:]
    return out


def get(path: str, *fields: str, method: str = "GET", host: str = "video.test") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *fields]) + "\r\n\r\n").encode()


# The fast path turned off (server.fast_path = false): aiohttp answers every request, behind the same guard.
@pytest.fixture(params=[(64 * 2**20, True), (0, True), (64 * 2**20, False)], ids=["memory", "disk", "fast-path-off"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    origin.put("/small", SMALL)
    origin.put("/big", BIG)
    memory, fast = request.param
    config = make_config(tmp_path / "cache", [origin.url], memory_bytes=memory)
    async with start_edge(replace(config, fast_path=fast)) as e:
        for path in ("/small", "/big"):
            assert (await e.get(path))[0] == 200
        await e.node.engine.flush()
        yield e


def status_and_body(raw: bytes) -> list[tuple[bytes, str | None, bytes]]:
    return [(status, fields.get("Cache-Status"), body) for status, fields, body in responses(raw)]


HIT = "edgecache; hit"
MISS = "edgecache; fwd=uri-miss; stored"


async def test_hits(edge: Edge, origin: Origin) -> None:
    hits = dict(origin.hits)
    for _ in range(2):
        raw = await half_closed(edge, get("/small") + get("/big", "Range: bytes=1048570-1048585") + get("/big"))
        assert status_and_body(raw) == [
            (b"HTTP/1.1 200 OK", HIT, SMALL),
            (b"HTTP/1.1 206 Partial Content", HIT, BIG[1048570:1048586]),
            (b"HTTP/1.1 200 OK", HIT, BIG),
        ]
    assert dict(origin.hits) == hits


async def test_misses(edge: Edge, origin: Origin) -> None:
    for attempt in range(2):
        path = f"/new-{attempt}"
        origin.put(path, BIG[attempt : attempt + 5000])
        raw = await half_closed(edge, get(path))
        assert status_and_body(raw) == [(b"HTTP/1.1 200 OK", MISS, BIG[attempt : attempt + 5000])]
        assert origin.hits[path] == 1


async def test_a_hit_then_a_miss_then_a_hit(edge: Edge, origin: Origin) -> None:
    """The fast path answers the first, hands the connection over at the second, aiohttp answers the rest."""
    for attempt in range(2):
        path = f"/later-{attempt}"
        origin.put(path, b"fetched in the middle")
        reqs = get("/small", "Range: bytes=0-9") + get(path) + get("/small", "Range: bytes=10-19")
        raw = await half_closed(edge, reqs)
        assert status_and_body(raw) == [
            (b"HTTP/1.1 206 Partial Content", HIT, SMALL[:10]),
            (b"HTTP/1.1 200 OK", MISS, b"fetched in the middle"),
            (b"HTTP/1.1 206 Partial Content", HIT, SMALL[10:20]),
        ]
        assert origin.hits[path] == 1


async def test_pass_through(edge: Edge, origin: Origin) -> None:
    for attempt in range(2):
        body = b"posted %d" % attempt
        raw = await half_closed(edge, get("/upload", f"Content-Length: {len(body)}", method="POST") + body)
        assert [(status, body) for status, _, body in responses(raw)] == [(b"HTTP/1.1 201 Created", b"stored\n")]
        assert origin.hits["/upload"] == attempt + 1
        assert origin.objects["/upload"].data == body


async def test_errors(edge: Edge, origin: Origin) -> None:
    hits = dict(origin.hits)
    for _ in range(2):
        raw = await half_closed(edge, get("/small", host="nowhere.test"))
        assert [status for status, _, _ in responses(raw)] == [b"HTTP/1.1 421 Misdirected Request"]
        raw = await half_closed(edge, b"GET /small HTTP/1.1\r\nHost: video.test\r\nBad Field: x\r\n\r\n")
        assert [status for status, _, _ in responses(raw)] == [b"HTTP/1.0 400 Bad Request"]
    assert dict(origin.hits) == hits


async def test_a_head_not_finished_before_the_half_close_is_closed(edge: Edge) -> None:
    raw = await half_closed(edge, get("/small") + b"GET /small HTTP/1.1\r\nHost: vid")
    assert status_and_body(raw) == [(b"HTTP/1.1 200 OK", HIT, SMALL)]


async def test_a_connection_that_sends_nothing_before_its_half_close_is_closed_at_once(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect probe (cluster health checks, load balancers) sends nothing: nothing is handed to aiohttp, which
    could tell there is nothing to answer only once its task first ran (HeadGuard looks every _EOF_CHECK)."""
    monkeypatch.setattr(headguard, "_EOF_CHECK", 3600.0)
    assert edge.fast is not None
    handed = set(edge.fast.handed)  # the fixture's own client's
    for _ in range(2):
        assert await half_closed(edge, b"") == b""
        assert edge.fast.handed == handed
