"""Fields aiohttp's server adds or drops as it frames an answer, and how both paths frame them: no Content-Type for
a stored answer with a body and no type (aiohttp's server would add application/octet-stream: proxy.exact; RFC 9110
7.7, 8.3), a HEAD's as its GET's (9.3.2), and no Content-Length on a 204 (RFC 9110 8.6). Both paths are asked the
same raw requests, a miss then hits, and their raw answers compared (Date and Age masked); the fast edge answers them
all, the 204's miss too."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import make_config, start_edge
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import fast_path_outcomes

UNTYPED = b"an answer that names no type\n"


def reply(request: RawRequest) -> RawReply:
    if request.path == "/untyped":
        head = f'HTTP/1.1 200 OK\r\nContent-Length: {len(UNTYPED)}\r\nCache-Control: max-age=3600\r\nETag: "u"\r\n\r\n'
        return head.encode() + (b"" if request.method == "HEAD" else UNTYPED), False
    if request.path == "/nothing":
        return b'HTTP/1.1 204 No Content\r\nCache-Control: max-age=3600\r\nETag: "n"\r\n\r\n', False
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False


ASKED = [
    ("GET", "/untyped", ""),  # the miss
    ("GET", "/untyped", ""),  # a hit
    ("HEAD", "/untyped", ""),  # no body, and the GET's fields all the same (RFC 9110 9.3.2)
    ("GET", "/untyped", "Range: bytes=3-9\r\n"),
    ("GET", "/untyped", 'If-None-Match: "u"\r\n'),  # 304
    ("GET", "/nothing", ""),
    ("GET", "/nothing", ""),
    ("HEAD", "/nothing", ""),
]


@pytest.fixture
async def raw_origin() -> AsyncIterator[RawOrigin]:
    origin = RawOrigin(reply)
    await origin.start()
    yield origin
    await origin.stop()


async def answers(port: int) -> list[bytes]:
    """Each request on a connection of its own, read to the close."""
    out = []
    for method, path, extra in ASKED:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: video.test\r\n{extra}Connection: close\r\n\r\n".encode())
            async with asyncio.timeout(10):
                out.append(re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", await reader.read(-1)))
        finally:
            writer.close()
    return out


async def test_untyped_and_204_answers_are_framed_alike_and_untyped_stays_untyped(
    raw_origin: RawOrigin, tmp_path: Path
) -> None:
    got = {}
    for fast in (True, False):
        config = replace(make_config(tmp_path / str(fast), [raw_origin.url]), fast_path=fast)
        async with start_edge(config) as edge:
            before = fast_path_outcomes()
            got[fast] = await answers(edge.port)
            if fast:  # the 204's miss too, from its fill (proxy.uncached)
                assert fast_path_outcomes()["handed_off"] == before["handed_off"]
    assert got[True] == got[False]
    untyped, nothing = got[True][1], got[True][6]
    for answer in got[True][:5]:  # /untyped's answers: the miss, the hits, a HEAD, a range, a 304
        assert b"Content-Type" not in answer, answer
    for answer in got[True][:3]:
        assert b"\r\nContent-Length: %d\r\n" % len(UNTYPED) in answer, answer
    assert untyped.endswith(b"\r\n\r\n" + UNTYPED)
    assert b"Content-Length" not in nothing
    assert nothing.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert nothing.endswith(b"\r\n\r\n")
    assert raw_origin.hits["/untyped"] == 2
    assert raw_origin.hits["/nothing"] == 2
