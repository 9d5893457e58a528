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

from edgecache.config import ClusterSettings, Listen, OriginSettings, Site
from edgecache.core.ring import Member
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge
from tests.e2e import test_relay as relay
from tests.e2e.procs import free_port
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


@asynccontextmanager
async def _opened(gate: asyncio.Event) -> AsyncIterator[None]:
    """The held answers go on however the test ends, so the scripted peer can close."""
    try:
        yield
    finally:
        gate.set()


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


def _node2_owns(site: str, host: str, prefix: str, n: int) -> list[str]:
    names = (f"{prefix}{i}" for i in range(1000))
    return [p for p in names if (m := relay.RING.owner(f"{site}|{host}|{p}")) is not None and m.id == "node2"][:n]


async def test_forwards_of_a_hung_site_leave_the_other_sites_connections_to_the_peer(
    origin: Origin, tmp_path: Path
) -> None:
    """The fast path's relays to one peer (proxy.peerpool, origin.max_connections of them) are shared the same
    way: an owner that hangs on one site's objects (its origin does) held every connection to it, and each other
    site's forward to that owner waited out the connect timeout and got 504."""
    gate = asyncio.Event()
    arrived = asyncio.Condition()

    async def hung(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with arrived:
            arrived.notify_all()
        await gate.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld")

    async def fine(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nb object")

    held, other = _node2_owns("videos", "video.test", "/a/", POOL), _node2_owns("other", "b.test", "/b/", 1)[0]
    scripts: dict[str, relay.Script] = {**dict.fromkeys(held, hung), other: fine}
    share = POOL - POOL // 4
    async with relay.ScriptedPeer(scripts) as peer, _opened(gate):
        port = free_port()
        members = (Member("node1", f"127.0.0.1:{port}"), Member("node2", f"127.0.0.1:{peer.port}"))
        base = make_config(tmp_path / "node1", [origin.url])
        b = Site(name="other", hosts=("b.test",), origins=(origin.url,))
        cluster = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=0.5, fall=1_000_000)
        origin_settings = OriginSettings(connect_timeout=5.0, read_timeout=30.0, max_connections=POOL)
        config = replace(
            base, listen=(Listen("127.0.0.1", port),), cluster=cluster, origin=origin_settings, sites=(*base.sites, b)
        )
        async with start_edge(config) as edge, _tasks() as viewers:
            viewers += [asyncio.ensure_future(_get(edge, p, "video.test")) for p in held]
            async with arrived, asyncio.timeout(10):
                await arrived.wait_for(lambda: len(peer.seen) >= share)
            async with asyncio.timeout(4):  # less than connect_timeout: B never waited for A's connections
                assert await _get(edge, other, "b.test") == (200, b"b object")
            assert peer.seen[share:] == [other]  # A's last forward waits for one of A's own connections
            gate.set()
            async with asyncio.timeout(10):
                assert await asyncio.gather(*viewers) == [(200, b"held")] * POOL
            assert sorted(peer.seen) == sorted([*held, other])
