"""The fast path refuses exactly what the full path refuses: for each request head, an edge that answers it from
its fast path gives the same statuses as an edge with the fast path off (aiohttp answers everything).

Before, the fast path parsed heads with its own parser and answered hits aiohttp refuses with 400: 300 header
lines, a field that must occur once sent twice (Content-Type, User-Agent, Max-Forwards, ...). A seeded sample of
the heads loadtest/fuzz_heads.py generates (python -m loadtest.fuzz --target heads runs 100,000), then the
cases found so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from loadtest import fuzz_heads
from loadtest.fuzzgen import G
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_fast_path import answered
from tests.origin import Origin

SAMPLE = 400

FOUND = [
    # 300 header lines: aiohttp takes 128 at most
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n",
    # 128 fields, then a Range line: 129
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\n"
    + b"".join(b"X-F%d: v\r\n" % i for i in range(127))
    + b"Range: bytes=0-9\r\n\r\n",
    b"GET /obj HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\nHost: video.test\r\n\r\n",
    b"GET /obj HTTP/1.1\r\nMax-Forwards:\r\nMax-Forwards:\r\nHost:video.test\r\n\r\n",
    b"GET /obj?a=1 HTTP/1.1\r\nUser-Agent:\r\nuser-agent:\r\nHost:video.test\r\nRange:bytes=-3\r\n\r\n",
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\nX-Long: " + b"v" * 8185 + b"\r\n\r\n",  # name + value: 8191
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\nAccept: a\x00b\r\n\r\n",
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\nRange: bytes=0-9\x0b\r\n\r\n",
    # found by the 100,000-head run: aiohttp counts a long field name with the next field's (8,186 + 5 > 8,190)
    b"GET /obj?a=1 HTTP/1.1\r\nHost: video.test\r\n" + b"N" * 8186 + b":  RF*+\r\nRange: bytes=100-200\r\n\r\n",
]


async def exchange(edge: Edge, head: bytes) -> list[int]:
    """The statuses for `head` and then the closing request (none after a head that closes the connection itself:
    fuzz_heads.closes), read until the edge closes (or resets: a refused
    head leaves the closing request unread, and the kernel answers that with a reset after our answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    parts = []
    try:
        writer.write(fuzz_heads.with_close(head))
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                parts.append(chunk)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return fuzz_heads.statuses(b"".join(parts))


@pytest.fixture
async def pair(origin: Origin, tmp_path: Path) -> AsyncIterator[tuple[Edge, Edge]]:
    origin.put("/obj", fuzz_heads.BODY)
    origin.put("/sub/obj2", fuzz_heads.BODY)
    async with AsyncExitStack() as stack:
        edges = []
        for name, fast in (("fast", True), ("full", False)):
            config = replace(make_config(tmp_path / name, [origin.url]), fast_path=fast)
            edge = await stack.enter_async_context(start_edge(config))
            for path in fuzz_heads.PATHS:
                await edge.get(path)
            edges.append(edge)
        yield edges[0], edges[1]


async def test_the_fast_path_refuses_what_the_full_path_refuses(pair: tuple[Edge, Edge]) -> None:
    fast, full = pair
    g = G(13)
    heads = FOUND + [fuzz_heads.head(g) for _ in range(SAMPLE)]
    differ = []
    before = answered()
    for head in heads:
        ours, theirs = await exchange(fast, head), await exchange(full, head)
        if ours != theirs:
            differ.append((head[:300], ours, theirs))
    assert differ == []
    assert await exchange(fast, FOUND[0]) == [400]  # and the full path gives the same
    # Agreeing is not enough: a fast path that answered nothing would agree too. A plain hit is its own.
    plain = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n"
    assert answered() - before > 0
    before = answered()
    assert await exchange(fast, plain) == [200]
    assert answered() - before == 1


# Heads ended by bare LFs, nothing after them: no CRLF CRLF ever comes.
BARE_LF_ENDS = [
    b"GET /obj HTTP/1.1\nHost: video.test\n\n",
    b"GET /obj HTTP/1.1\r\nHost: video.test\n\n",
    b"GET /obj HTTP/1.1\r\nHost: video.test\r\n\n",
]


async def test_a_head_ended_by_bare_line_feeds_is_refused_at_once(pair: tuple[Edge, Edge]) -> None:
    """The fast path hands such a head to aiohttp as soon as it has it, and aiohttp refuses it, as it does with
    the fast path off. It waited for the head's time limit (10 s) and answered 408."""
    for edge in pair:
        for head in BARE_LF_ENDS * 2:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(head)
                async with asyncio.timeout(5):  # half the head's time limit
                    answer = await reader.read(-1)
            finally:
                writer.close()
            assert fuzz_heads.statuses(answer) == [400], head
