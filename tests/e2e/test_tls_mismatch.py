"""The wrong protocol on a listener: TLS sent to a plain HTTP port, plain HTTP sent to an HTTPS port. Each gets a
400 in plain HTTP at once and is closed, as nginx answers them, instead of a wait or a silent close."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from edgecache.config import Listen
from tests.conftest import make_config, start_edge
from tests.e2e.test_tls import BODY, client_hello, fetch, issue
from tests.origin import Origin
from tests.wire import own_error

REFUSED_TLS = b"Received HTTPS traffic on an HTTP port"  # aiohttp's reason


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(5):  # the header timeout is 60 s
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_tls_sent_to_the_plain_port_is_answered_400_at_once(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A TLS client on the plain HTTP port (https:// to an http port) waited for the header timeout (10 s by
    default, a connection held all the while) and then got a 408: a ClientHello has no blank line to end a head.
    A head that starts with a TLS record (0x16) goes to aiohttp at once now, whose 400 names the fault."""
    origin.put("/v.bin", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url]), header_timeout=60.0, fast_path=fast)
    async with start_edge(config) as edge:
        for _ in range(2):
            answer = await exchange(edge.port, client_hello(b"video.test"))
            head, _, body = answer.partition(b"\r\n\r\n")
            assert (head.split(b"\r\n")[0], body) == (b"HTTP/1.0 400 Bad Request", REFUSED_TLS)
        assert (await edge.get("/v.bin"))[2] == BODY
    assert origin.hits["/v.bin"] == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_plain_http_sent_to_the_https_port_is_answered_400(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A plain HTTP client on the HTTPS port (http:// to port 443) was closed without a byte: the TLS handshake
    failed on its request line. nginx answers '400 The plain HTTP request was sent to HTTPS port'; so does the node
    now, in plain HTTP, and closes. A TLS client still gets its handshake, on the same listener."""
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),), header_timeout=60.0, fast_path=fast)
    async with start_edge(config) as edge:
        for _ in range(2):
            answer = await exchange(edge.ports[1], b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
            assert answer == own_error(answer, 400, "the plain HTTP request was sent to HTTPS port")
            assert edge.fast is None or (edge.fast.open, edge.fast.handshaking) == (0, set())  # its seat let go
            assert (await fetch(edge.ports[1], ca, "video.test", "video.test", "/v.bin")).endswith(BODY)
    assert origin.hits["/v.bin"] == 1
