"""Every count of work in hand returns to its idle value on every node of a cluster, and on a node of two worker
processes, once idle after faults (tests.e2e.idlecounts; the faults of one node: test_idle_counts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import types
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import Config
from tests.conftest import Edge
from tests.e2e.idlecounts import _pools, disk_settled, disks_settled, gauges, settled, until
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_idle_counts import (
    BIG,
    SMALL,
    Fault,
    MiB,
    answered,
    client_gone_hit,
    client_gone_miss,
    client_gone_pass,
    client_gone_private,
    client_gone_range,
    cut_after,
    get,
    holding,
    origin_5xx,
    origin_cut,
    origin_hangs,
    pipelined_batch_cut,
    put_objects,
    request_body_cut,
    reset,
)
from tests.e2e.test_operations import metric
from tests.e2e.test_watchdog import metrics_until, node, write_config
from tests.origin import Origin


def owned_by(configs: list[Config], member: str, prefix: str) -> str:
    return next(p for p in (f"{prefix}/{i}" for i in range(200)) if owner_of(configs, p) == member)


def kill(edge: Edge) -> None:
    """Every client connection of the node broken at once, as its process killed would leave them."""
    fast = edge.fast
    assert fast is not None
    for transport in [c.transport for c in fast.connections] + list(fast.handed):
        if transport is not None:
            transport.abort()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_every_count_of_every_node_of_a_cluster_is_back_at_idle_after_its_faults(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """node1 forwards to node2 and node3: its viewers go mid-answer (a miss at the owner, a hit there, a pipelined
    batch), go while the owner's origin holds the head, and node3 is killed mid-forward. Every node's counts come
    back to idle after each."""
    configs = [
        replace(
            c,
            fast_path=fast,
            origin=replace(c.origin, read_timeout=2.0),
            sites=(replace(c.sites[0], origin_connections=1),),
        )
        for c in cluster_configs(origin, tmp_path)
    ]
    mine, theirs = owned_by(configs, "node2", "/m"), owned_by(configs, "node3", "/t")
    smalls = [owned_by(configs, "node2", f"/s{i}") for i in range(4)]
    for path in (mine, theirs):
        origin.put(path, BIG)
    for path in smalls:
        origin.put(path, SMALL)
    release = asyncio.Event()
    held = owned_by(configs, "node2", "/slow")
    before = gauges()
    async with started(configs) as nodes:
        port = nodes[0].port
        await cut_after(port, get(mine))  # a miss at the owner
        await settled(nodes, before, "step 1")
        assert (await answered(port, get(mine))) == (200, BIG)
        await cut_after(port, get(mine))  # a hit there
        await settled(nodes, before, "step 2")
        await cut_after(port, b"".join(get(p) for p in [*smalls, mine, *smalls]), read=150_000)
        await settled(nodes, before, "step 3")
        origin.on_request = holding(release)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get(held))
        await until(lambda: origin.hits[held] == 1)
        reset(writer)  # gone while the owner waits for its origin's head... then its body
        release.set()
        await settled(nodes, before, "step 4")
        await share_wait_then_gone(nodes, origin, fast)
        await settled(nodes, before, "step 4b")
        if fast:
            await stalled_viewer_then_gone(nodes, mine)
            await settled(nodes, before, "step 4c")
        origin.on_request = None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get(theirs))
        await reader.readexactly(200_000)
        kill(nodes[2])  # node3, mid-forward
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            async with asyncio.timeout(10):
                await reader.read(-1)
        writer.close()
        await settled(nodes, before, "step 5")
        for node in nodes[:2]:
            await disks_settled(node)


async def share_wait_then_gone(nodes: list[Edge], origin: Origin, fast: bool) -> None:
    """node1's viewer A holds the site's one connection to node2 (node2's origin trickles the body); viewer B's
    forward waits for it and B goes away meanwhile; then A goes too."""
    release = asyncio.Event()
    origin.on_request = holding(release)
    slow, small = (
        next(p for p in (f"{d}/{i}" for i in range(200)) if owner_of_edges(nodes, p) == "node2")
        for d in ("/slow2", "/b")
    )
    origin.put(small, SMALL)
    a = await asyncio.open_connection("127.0.0.1", nodes[0].port)
    a[1].write(get(slow))
    await a[0].readexactly(50_000)
    b = await asyncio.open_connection("127.0.0.1", nodes[0].port)
    b[1].write(get(small))
    await until(lambda: forwards_waiting(nodes[0], fast) == 1)
    reset(b[1])
    reset(a[1])
    release.set()


def owner_of_edges(nodes: list[Edge], path: str) -> str:
    return owner_of([n.node.config for n in nodes], path)


def forwards_waiting(edge: Edge, fast: bool) -> int:
    """node1's forwards waiting for their site's share of the connections to a peer."""
    if fast:
        assert edge.fast is not None
        assert edge.fast._peers is not None
        return sum(edge.fast._peers.waiting.values())
    return sum(t.waiting for pool in _pools(edge) for t in pool.shares._of.values())


async def stalled_viewer_then_gone(nodes: list[Edge], path: str) -> None:
    """A viewer of node1 stops reading a relayed answer: its connection to node2 is paused; then the viewer goes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", nodes[0].port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(get(path))
    await reader.readexactly(1000)
    peers = nodes[0].fast._peers  # type: ignore[union-attr]
    await until(lambda: sum(peers.stalled.values()) == 1)  # type: ignore[union-attr]
    reset(writer)


PROCESS_FAULTS: list[Fault] = [
    client_gone_miss,
    client_gone_hit,
    client_gone_range,
    client_gone_private,
    client_gone_pass,
    pipelined_batch_cut,
    request_body_cut,
    origin_cut,
    origin_hangs,
    origin_5xx,
]


async def test_a_node_of_two_workers_is_back_at_idle_after_its_faults(origin: Origin, tmp_path: Path) -> None:
    """`edgecache serve` with two workers, whose fills may hold 4 MiB at once (3 MiB in the shared pool): after the
    faults, /metrics (the workers' gauges summed) shows no fill memory held or waited for, the disk holds no lease
    and no value outside its index, and fills of 3 MiB objects go on one after another (fill memory left counted
    would hold each back until it is refused: 503)."""
    put_objects(origin)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    text = cfg.read_text().replace('memory = "16MiB"\n', 'memory = "16MiB"\nfill_memory = "4MiB"\n')
    cfg.write_text(text + "[origin]\nread_timeout = 1.0\n")
    shim = types.SimpleNamespace(edge=types.SimpleNamespace(port=port))
    async with node(cfg) as n:
        await n.expect("edgecache listening on", 2)
        await n.expect("admin listening on")
        for fault in PROCESS_FAULTS:
            await fault(shim, origin)  # type: ignore[arg-type]

        def idle(seen: str) -> bool:
            held = [metric(seen, name) for name in ("edgecache_fill_memory_bytes", "edgecache_fill_memory_waiting")]
            return "edgecache_fill_memory_bytes{" in seen and held == [0.0, 0.0]

        await metrics_until(admin, idle, "no fill memory held or waited for")
        for i in range(8):  # new objects: each a fill of its own, on whichever worker
            origin.put(f"/after/{i}", BIG[: 3 * MiB])
            assert await answered(port, get(f"/after/{i}")) == (200, BIG[: 3 * MiB])
        await disk_settled(tmp_path / "cache")
        assert await n.stop() == 0
