"""A forward whose owner breaks off before answering, on a connection that starts draining meanwhile: the owner is
down at once, and the request, let in before the drain, is decided again for its next owner (this node, standing
in) on the fast path, answered, then the connection closed. Before, a draining connection's forward found gone was
handed to aiohttp (relay.forward)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import start_edge
from tests.e2e.test_cluster import phantom_owner
from tests.origin import Origin
from tests.wire import answered_while_draining, fast_path_outcomes


async def test_a_forward_found_gone_on_a_draining_connection_is_decided_again_without_a_hand_off(
    origin: Origin, tmp_path: Path
) -> None:
    cfg, keys = phantom_owner(origin, tmp_path)
    assert cfg.cluster is not None
    node3 = next(m for m in cfg.cluster.nodes if m.id == "node3")
    host, _, port = node3.address.rpartition(":")
    release, reached = asyncio.Event(), asyncio.Event()

    async def breaking(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """node3: takes each forward's connection, and closes it unanswered once the test lets it."""
        reached.set()
        await release.wait()
        writer.close()

    peer = await asyncio.start_server(breaking, host, int(port))
    try:
        async with start_edge(cfg) as edge, asyncio.timeout(20):
            assert edge.node.cluster is not None
            before = fast_path_outcomes()
            request = f"GET {keys[0]} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode()
            answer = await answered_while_draining(edge.port, edge.fast, request, reached, release)
            outcomes = fast_path_outcomes()
            assert not edge.node.cluster.is_up("node3")
    finally:
        peer.close()
        await peer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nCache-Status: edgecache; fwd=uri-miss; stored\r\n" in head  # filled here, standing in for node3
    assert body == keys[0].encode() * 50
    assert origin.hits[keys[0]] == 1
    assert (outcomes["handed_off"] - before["handed_off"], outcomes["answered"] - before["answered"]) == (0, 1)
