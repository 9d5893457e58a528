"""An origin that writes a second answer on a keep-alive connection after its first has ended, while the edge holds
the connection idle in its pool: the next request sent on it must never take those bytes for its answer.

aiohttp parses what an idle connection receives and keeps it as a finished answer; its pool reused such a connection,
so each URL asked next was stored with the answer of the one before (proxy.origin._Pool)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import Edge, make_config, start_edge

CC = b'Cache-Control: public, max-age=3600\r\nETag: "v1"\r\n'
STRAY = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "evil"\r\nCache-Control: public, max-age=3600\r\n\r\nEVIL!'


class StrayOrigin:
    """Answers each path with the path itself; after answering /late, writes STRAY once told to (`go`)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.written = asyncio.Event()
        self.hits: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                self.hits.append(path.decode())
                writer.write(b"HTTP/1.1 200 OK\r\n" + CC + b"Content-Length: %d\r\n\r\n" % len(path) + path)
                await writer.drain()
                if path.startswith(b"/late"):
                    await self.go.wait()  # the edge has answered /late: the connection is idle in its pool
                    writer.write(STRAY)
                    await writer.drain()
                    self.written.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=[True, False], ids=["fast", "framework"])
async def edge(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Edge, StrayOrigin]]:
    origin = StrayOrigin()
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with start_edge(replace(make_config(tmp_path / "c", [url]), fast_path=request.param)) as e:
            yield e, origin
    finally:
        server.close()
        await server.wait_closed()


async def test_bytes_an_idle_origin_connection_received_are_never_an_answer(edge: tuple[Edge, StrayOrigin]) -> None:
    e, origin = edge
    assert (await e.get("/late"))[2] == b"/late"
    origin.go.set()
    await origin.written.wait()
    for _ in range(2):  # each URL its own bytes, asked and then from the cache
        for path in ("/plain/a", "/plain/b", "/plain/c"):
            status, headers, body = await e.get(path)
            assert (status, body, headers["ETag"]) == (200, path.encode(), '"v1"')
    assert origin.hits == ["/late", "/plain/a", "/plain/b", "/plain/c"]
