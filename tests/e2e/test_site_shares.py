"""One site's origin that hangs never takes every fill connection of a worker: each site holds at most its share
of origin.max_connections (proxy.shares), so the other sites' cold misses always find a connection, and the
hung site's requests past its share wait for one of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import OriginSettings, Site
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value

POOL = 4  # origin.max_connections: a site's default share with two sites is 4 - 4 // 4 = 3


async def _get(edge: Edge, path: str, host: str) -> tuple[int, bytes]:
    status, _, body = await edge.get(path, host=host)
    return status, body


@asynccontextmanager
async def _tasks() -> AsyncIterator[list[asyncio.Future[tuple[int, bytes]]]]:
    """Requests in flight: those a failed assertion left are cancelled before the edge closes."""
    tasks: list[asyncio.Future[tuple[int, bytes]]] = []
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("path", ["fast", "framework"])
@pytest.mark.parametrize("own", [None, 2], ids=["default", "origin_connections"])
async def test_a_hung_site_leaves_the_other_sites_connections(tmp_path: Path, path: str, own: int | None) -> None:
    hung, other = Origin(), Origin()
    await hung.start()
    await other.start()
    try:
        hung.gate = asyncio.Event()
        for i in range(POOL):
            hung.put(f"/a{i}", f"a object {i}".encode())
        other.put("/b", b"b object")
        config = make_config(tmp_path / "cache", [hung.url])
        held = own if own is not None else POOL - POOL // 4
        a = replace(config.sites[0], name="hung", hosts=("a.test",), origin_connections=own)
        b = Site(name="other", hosts=("b.test",), origins=(other.url,))
        origin = OriginSettings(connect_timeout=5.0, read_timeout=30.0, max_connections=POOL)
        config = replace(config, sites=(a, b), origin=origin, fast_path=path == "fast")
        waits = sample_value("edgecache_origin_share_waits_total", {"site": "hung"}) or 0.0
        async with start_edge(config) as edge, _tasks() as gets:
            gets += [asyncio.ensure_future(_get(edge, f"/a{i}", "a.test")) for i in range(POOL)]
            async with asyncio.timeout(10):
                await hung.wait_for_requests(held)
            async with asyncio.timeout(4):  # less than connect_timeout: B never waited for A's connections
                assert await _get(edge, "/b", "b.test") == (200, b"b object")
            assert other.hits["/b"] == 1
            assert len(hung.seen) == held  # the rest of A's wait for one of A's own connections
            assert sample_value("edgecache_origin_share_waits_total", {"site": "hung"}) == waits + POOL - held
            hung.gate.set()
            async with asyncio.timeout(10):
                done = await asyncio.gather(*gets)
            assert done == [(200, f"a object {i}".encode()) for i in range(POOL)]
            assert [hung.hits[f"/a{i}"] for i in range(POOL)] == [1] * POOL
    finally:
        await hung.stop()
        await other.stop()
