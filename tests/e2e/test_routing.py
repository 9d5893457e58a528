"""No open proxy: only configured hosts are served, and only from their own origins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Edge
from tests.origin import Origin


@pytest.fixture
async def other() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    o.put("/x", b"must never be fetched through the edge")
    yield o
    await o.stop()


async def raw(edge: Edge, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1]) if data.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else 0
    return status, data


async def test_unknown_host_is_refused(edge: Edge, origin: Origin) -> None:
    origin.put("/x", b"ok")
    status, _, body = await edge.get("/x", host="evil.test")
    assert status == 421
    assert b"no site is configured for host 'evil.test'" in body
    status, _, body = await edge.get("/x", host="a.b.cdn.test")  # a wildcard site
    assert (status, body) == (200, b"ok")
    status, _, _ = await edge.get("/x", host="cdn.test")  # '*.cdn.test' does not cover the bare name
    assert status == 421
    assert origin.hits["/x"] == 1


async def test_absolute_form_to_another_host_never_reaches_it(edge: Edge, origin: Origin, other: Origin) -> None:
    origin.put("/x", b"from the configured origin")
    req = f"GET http://127.0.0.1:{other.port}/x HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n"
    status, data = await raw(edge, req.encode())
    assert status == 421, data
    req = "GET http://video.test/x HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n"
    status, data = await raw(edge, req.encode())
    assert status == 200, data
    assert data.endswith(b"from the configured origin"), data
    assert other.hits["/x"] == 0


async def test_connect_is_refused(edge: Edge, other: Origin) -> None:
    req = f"CONNECT 127.0.0.1:{other.port} HTTP/1.1\r\nHost: 127.0.0.1:{other.port}\r\n\r\n"
    status, data = await raw(edge, req.encode())
    assert 400 <= status < 500, data
    assert sum(other.hits.values()) == 0


async def test_a_connect_closes_its_connection_so_bytes_after_it_are_never_a_request(
    edge: Edge, origin: Origin
) -> None:
    origin.put("/smuggled", b"must not be asked for")
    inner = b"GET /smuggled HTTP/1.1\r\nHost: video.test\r\n\r\n"
    head = f"CONNECT video.test:80 HTTP/1.1\r\nHost: video.test\r\nContent-Length: {len(inner)}\r\n\r\n"
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(head.encode() + inner)
            async with asyncio.timeout(10):
                data = await reader.read(-1)  # to the close: one answer, the 405
        finally:
            writer.close()
        assert data.startswith(b"HTTP/1.1 405 "), data
        assert data.count(b"HTTP/1.1 ") == 1, data
    assert origin.hits["/smuggled"] == 0


async def test_bad_targets_get_400(edge: Edge, origin: Origin) -> None:
    origin.put("/secret", b"top")
    for target in ("/a/%00/b", "/a%00"):
        status, data = await raw(
            edge, f"GET {target} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 400, (target, data)
    # Dot segments, encoded or not, resolve inside the site: they name /secret, never anything outside it.
    for target in ("/x/../secret", "/x/%2e%2e/secret", "/%2E%2E/%2e%2e/secret"):
        status, data = await raw(
            edge, f"GET {target} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 200, (target, data)
        assert data.endswith(b"top"), (target, data)
    assert origin.hits["/secret"] == 1
    assert {s.path for s in origin.seen} == {"/secret"}


async def test_unkeyed_headers_never_reach_the_origin(edge: Edge, origin: Origin) -> None:
    origin.put("/page", b"p")
    poison = {
        "X-Forwarded-Host": "evil.test",
        "X-Forwarded-Proto": "gopher",
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
        "X-HTTP-Method-Override": "DELETE",
        "Forwarded": "host=evil.test",
    }
    assert (await edge.get("/page", **poison))[2] == b"p"
    seen = {k.lower() for k in origin.seen[0].headers}
    assert not seen & {k.lower() for k in poison}
    assert origin.seen[0].headers["Host"] == "video.test"
