"""A peer answer neither path's parser can read is counted as the peer's kind `malformed`, as an origin's is the
origin's (proxy.nohead); before, it counted as `reset`, a broken connection. The viewer is told only that a peer
failed and how, never which node nor what it sent. A GET fails over (the peer marked down, this node serving it
from the origin); a POST, which may have had its effect, is a 502."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import ClusterSettings, Config, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, make_config, start_edge
from tests.e2e.procs import free_port
from tests.e2e.test_cluster import STALL
from tests.e2e.test_peer_metrics import deltas, origin_errors, owned_by, peer_errors
from tests.e2e.test_relay import answers, exchange, fast_path, request
from tests.origin import Origin, RawOrigin, RawReply, RawRequest
from tests.wire import own_error

HEADS = {
    "/space": b"HTTP/1.1 200 OK\r\nX-Bad : 1\r\nContent-Length: 4\r\n\r\nbody",
    "/status": b"HTTP/1.1 2000 OK\r\nContent-Length: 4\r\n\r\nbody",
    "/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
}


def reply(request: RawRequest) -> RawReply:
    head = next((v for k, v in HEADS.items() if request.path.startswith(k + "/")), None)
    return (head or b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), True  # a health check: answered


@pytest.fixture
async def peer() -> AsyncIterator[RawOrigin]:
    raw = RawOrigin(reply)
    await raw.start()
    try:
        yield raw
    finally:
        await raw.stop()


async def beside(origin: Origin, raw: RawOrigin, tmp_path: Path, fast: bool) -> tuple[Config, Ring]:
    port = free_port()
    members = (Member("node1", f"127.0.0.1:{port}"), Member("node2", f"127.0.0.1:{raw.port}"))
    base = make_config(tmp_path / "node1", [origin.url])
    # Health checks an hour apart: the GET's forward finds node2 down, and no check brings it back up (rise) while
    # the test looks; at 0.1 s, two checks on a loaded machine did, and the GET went to node2 again.
    cluster = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=3600, timeout=STALL, fall=1_000_000)
    return replace(base, listen=(Listen("127.0.0.1", port),), cluster=cluster, fast_path=fast), Ring.of(members)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("kind", list(HEADS))
async def test_a_peers_unparsable_answer_is_counted_malformed(
    origin: Origin, peer: RawOrigin, tmp_path: Path, fast: bool, kind: str
) -> None:
    config, ring = await beside(origin, peer, tmp_path, fast)
    path = owned_by(ring, "node2", kind)
    origin.put(path, b"from origin")
    async with start_edge(config) as edge:
        errors, origin_before, handed = peer_errors("node2"), origin_errors(), fast_path("handed_off")

        answer = await exchange(edge.port, request(path, "Content-Length: 3", method="POST", close=True) + b"abc")
        assert answer == own_error(answer, 502, "peer failed (malformed)")
        assert deltas(errors, errors := peer_errors("node2")) == {"malformed": 1}
        assert edge.node.cluster.is_up("node2")  # type: ignore[union-attr]

        answer = await exchange(edge.port, request(path, close=True))
        assert answers(answer, ["GET"])[0][::2] == (200, b"from origin")
        assert deltas(errors, peer_errors("node2")) == {"malformed": 1}
        assert not edge.node.cluster.is_up("node2")  # type: ignore[union-attr]

        assert fast_path("handed_off") - handed == int(fast)  # the POST: the GET was relayed by the fast path
        assert origin_errors() == origin_before  # none of it was the origin's
        assert peer.hits[path] == 2
        assert origin.hits[path] == 1
