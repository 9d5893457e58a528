"""A hit whose missing slice comes back as another version before any byte went out, on a connection that starts
draining meanwhile: the request, let in before the drain, is decided again on the fast path (a miss of the version
the origin has now, FastPath.again keeping its head processed), answered, then the connection closed. Before, a
draining connection's try was not counted (coldmiss.tried) and the request was handed to aiohttp."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin
from tests.wire import answered_while_draining, fast_path_outcomes

MiB = 2**20
OLD = bytes((i * 7 + 1) % 251 for i in range(3 * MiB))
NEW = bytes((i * 13 + 5) % 253 for i in range(3 * MiB))


async def test_a_new_version_met_on_a_draining_connection_is_decided_again_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    release, asked = asyncio.Event(), asyncio.Event()
    seen: list[str | None] = []

    async def held(request: web.BaseRequest, obj: Obj | None) -> None:
        """Once the new version is in, the first request for the last slice waits for the test's release."""
        seen.append(request.headers.get("Range"))
        if obj is not None and obj.etag == '"v2"' and not asked.is_set():
            asked.set()
            await release.wait()

    origin.put("/big", OLD)
    origin.on_request = held
    config = make_config(tmp_path / "c", [origin.url], fill_slices=1)
    async with start_edge(config) as edge, asyncio.timeout(20):
        status, _, body = await edge.get("/big", Range="bytes=0-99")  # slice 0 only
        assert (status, body) == (206, OLD[:100])
        origin.put("/big", NEW, etag='"v2"')
        before = fast_path_outcomes()
        last = 2 * MiB + 10
        request = f"GET /big HTTP/1.1\r\nHost: video.test\r\nRange: bytes={last}-{last + 99}\r\n\r\n".encode()
        answer = await answered_while_draining(edge.port, edge.fast, request, asked, release)
        outcomes = fast_path_outcomes()
    head, _, got = answer.partition(b"\r\n\r\n")
    fields = [x for x in head.split(b"\r\n") if not x.startswith(b"Date: ")]
    assert fields == [
        b"HTTP/1.1 206 Partial Content",
        b"Content-Type: application/octet-stream",
        b"Cache-Control: public, max-age=3600",
        b'ETag: "v2"',
        b"Last-Modified: Sat, 01 Nov 2025 00:00:00 GMT",
        b"Server: Python/3.11 aiohttp/3.14.5",
        b"Via: 1.1 edgecache",
        b"Age: 0",
        b"Cache-Status: edgecache; fwd=partial",
        b"Accept-Ranges: bytes",
        f"Content-Range: bytes {last}-{last + 99}/{len(NEW)}".encode(),
        b"Content-Length: 100",
    ]
    assert got == NEW[last : last + 100]  # the new version's bytes, never the old one's
    assert seen == ["bytes=0-1048575", "bytes=2097152-3145727"]  # the new version's slice, fetched once
    assert (outcomes["handed_off"] - before["handed_off"], outcomes["answered"] - before["answered"]) == (0, 1)
