"""Peers measured as peers: a forward's latency and failures are counted by peer and kind, never as the origin's,
and an answer that could not fail over says the peer failed.

A real 3-node cluster on loopback with one node stopped, and a real node whose peer is a socket this test drives
(it hangs, resets, answers 503, or cuts its body), so each kind of failure happens exactly when the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edgecache.config import ClusterSettings, Config, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge
from tests.e2e.procs import free_port
from tests.e2e.test_cluster import STALL, cluster_configs, owner_of, started
from tests.origin import Origin
from tests.samples import sample_value

KINDS = ("connect", "timeout", "reset", "malformed", "5xx")


def sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


def peer_errors(peer: str) -> dict[str, float]:
    return {k: sample("edgecache_peer_errors_total", peer=peer, kind=k) for k in KINDS}


def origin_errors() -> float:
    kinds = ("connect", "timeout", "malformed", "failed")
    return sum(sample("edgecache_origin_errors_total", site="videos", kind=k) for k in kinds)


def forwards(peer: str) -> tuple[float, float]:
    """(forwards answered, latency observations) for `peer`."""
    return (
        sample("edgecache_peer_forwarded_requests_total", peer=peer, site="videos"),
        sample("edgecache_peer_response_seconds_count", peer=peer),
    )


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


async def test_a_stopped_node_is_a_peer_error_of_that_peer_never_an_origin_error(
    origin: Origin, tmp_path: Path
) -> None:
    # Active checks never take a node down here (fall), so the first forward to the stopped node is what finds it.
    configs = [
        replace(c, cluster=replace(c.cluster, fall=1_000_000)) if c.cluster is not None else c
        for c in cluster_configs(origin, tmp_path)
    ]
    paths = [f"/p/{i}" for i in range(40)]
    for p in paths:
        origin.put(p, p.encode() * 500)
    node3_keys = [p for p in paths if owner_of(configs, p) == "node3"]
    assert len(node3_keys) >= 3
    async with started(configs[:2]) as (n1, _n2):
        async with start_edge(configs[2]):
            async with asyncio.timeout(10):
                await n1.node.cluster.wait_for(lambda: n1.node.cluster.is_up("node3"))  # type: ignore[union-attr]
            before, errors_before, peer_before = forwards("node3"), origin_errors(), peer_errors("node3")
            for p in node3_keys:
                status, headers, body = await n1.get(p)
                assert (status, body) == (200, p.encode() * 500)
                assert headers["Cache-Status"].endswith('edgecache; fwd=miss; detail="peer"')
            after = forwards("node3")
            # Each forward answered is counted once, and its time to the answer's head observed once.
            assert (after[0] - before[0], after[1] - before[1]) == (len(node3_keys), len(node3_keys))
            assert deltas(peer_before, peer_errors("node3")) == {}  # the registry is the process's: earlier tests count
        # node3 is gone. The first request for one of its keys finds it refused, fails over, and is served.
        hits = {p: origin.hits[p] for p in paths}
        errors = peer_errors("node3")
        origin_requests = sample("edgecache_origin_requests_total", site="videos", status_class="2xx")
        for p in node3_keys:
            status, _, body = await n1.get(p)
            assert (status, body) == (200, p.encode() * 500)
        assert deltas(errors, peer_errors("node3")) == {"connect": 1}
        assert not n1.node.cluster.is_up("node3")  # type: ignore[union-attr]
        # The next owners fetched each once: origin requests, not origin errors.
        assert origin_errors() == errors_before
        assert sample("edgecache_origin_requests_total", site="videos", status_class="2xx") - origin_requests == len(
            node3_keys
        )
        assert {p: origin.hits[p] - hits[p] for p in paths} == {p: int(p in node3_keys) for p in paths}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_peer_that_timed_out_is_named_to_no_viewer(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """Two real nodes; the owner's origin does not answer within the forwarding node's read timeout: the viewer
    gets 504 saying a peer failed, and how, never which node nor its internal address (both in the log: the
    access log's upstream_addr names the peer asked)."""
    configs = cluster_configs(origin, tmp_path)
    log = tmp_path / "access.log"
    first = replace(configs[0], origin=replace(configs[0].origin, read_timeout=0.5), fast_path=fast, access_log=log)
    path = next(p for i in range(200) if owner_of(configs, p := f"/slow/{i}") == "node2")
    release = asyncio.Event()

    async def hold(request: object, obj: object) -> None:
        await release.wait()

    origin.put(path, b"late")
    origin.on_request = hold
    async with started([first, configs[1]]) as (n1, n2):
        try:
            status, headers, body = await n1.get(path)
        finally:
            release.set()
        assert (status, body) == (504, b"peer failed (timeout)\n")
        assert headers["Cache-Status"] == 'edgecache; detail="peer failed (timeout)"'
        assert str(n2.port) not in body.decode() + headers["Cache-Status"]
    assert origin.hits[path] == 1
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["status"], r["cache"], r["upstream"], r["upstream_addr"]) for r in lines] == [
        (504, "error", "-", f"127.0.0.1:{n2.port}")
    ]


class FakePeer:
    """A cluster member that is a socket this test drives: by the request path's first segment it hangs
    (/hang), resets the connection (/reset), answers 503 (/busy), or cuts its body after 10 of 1000 bytes (/cut)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.seen: list[str] = []
        self.release = asyncio.Event()
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FakePeer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                head = await reader.readuntil(b"\r\n\r\n")  # a health check connects and closes: nothing to read
                path = head.split(b" ", 2)[1].decode()
                self.seen.append(path)
                if path.startswith("/hang/"):
                    await self.release.wait()
                elif path.startswith("/reset/"):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif path.startswith("/busy/"):
                    writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n")
                    await writer.drain()
                elif path.startswith("/cut/"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"c" * 10)
                    await writer.drain()
        finally:
            self.writers.discard(writer)
            writer.close()


def owned_by(ring: Ring, member: str, prefix: str) -> str:
    return next(
        p for i in range(1000) if (m := ring.owner(f"videos|video.test|{(p := f'{prefix}/{i}')}")) and m.id == member
    )


@pytest.fixture
async def beside_fake(origin: Origin, tmp_path: Path) -> AsyncIterator[tuple[Edge, FakePeer, Ring]]:
    """node1, a real edge, and node2, a FakePeer; peer reads time out after 0.5 s. Health checks an hour apart: a
    forward that finds node2 down leaves it down (no checks bring it back up, rise, while the test looks)."""
    async with FakePeer() as fake:
        port = free_port()
        members = (Member("node1", f"127.0.0.1:{port}"), Member("node2", f"127.0.0.1:{fake.port}"))
        base = make_config(tmp_path / "node1", [origin.url])
        cluster = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=3600, timeout=STALL, fall=1_000_000)
        config: Config = replace(
            base,
            listen=(Listen("127.0.0.1", port),),
            cluster=cluster,
            origin=replace(base.origin, read_timeout=0.5),
        )
        async with start_edge(config) as edge:
            yield edge, fake, Ring.of(members)


async def test_each_kind_of_peer_failure_is_the_peers(beside_fake: tuple[Edge, FakePeer, Ring], origin: Origin) -> None:
    edge, fake, ring = beside_fake
    hang, reset, busy, cut = (owned_by(ring, "node2", p) for p in ("/hang", "/reset", "/busy", "/cut"))
    for p in (hang, reset, busy, cut):
        origin.put(p, b"from origin")
    errors = peer_errors("node2")
    origin_before = origin_errors()

    # Timed out: no other node is asked (it may be only slow), and the answer says a peer failed, and how, never
    # which one nor its address (internal: the log names them).
    status, headers, body = await edge.get(hang)
    assert (status, body) == (504, b"peer failed (timeout)\n")
    assert headers["Cache-Status"] == 'edgecache; detail="peer failed (timeout)"'
    assert deltas(errors, errors := peer_errors("node2")) == {"timeout": 1}

    # 503 from the owner: relayed, counted as the peer's 5xx.
    status, headers, body = await edge.get(busy)
    assert (status, body) == (503, b"busy\n")
    assert deltas(errors, errors := peer_errors("node2")) == {"5xx": 1}

    # A body cut short: the client's connection is cut too (never a short body passed as whole), a peer reset.
    with pytest.raises(aiohttp.ClientPayloadError):
        await edge.get(cut)
    assert deltas(errors, errors := peer_errors("node2")) == {"reset": 1}

    # A reset of a request with a body: it may have had its effect, so no other node is asked.
    async with edge.session.post(edge.url + reset, data=b"x" * 100, headers={"Host": "video.test"}) as r:
        status, body = r.status, await r.read()
        cache_status = r.headers["Cache-Status"]
    assert (status, body) == (502, b"peer failed (reset)\n")
    assert cache_status == 'edgecache; detail="peer failed (reset)"'
    assert deltas(errors, errors := peer_errors("node2")) == {"reset": 1}

    # A reset GET fails over: this node serves it from the origin, and the peer is marked down.
    status, headers, body = await edge.get(reset)
    assert (status, body) == (200, b"from origin")
    assert deltas(errors, peer_errors("node2")) == {"reset": 1}
    assert not edge.node.cluster.is_up("node2")  # type: ignore[union-attr]

    assert origin_errors() == origin_before  # none of it was the origin's
    # aiohttp's client sends an idempotent request once more when a kept-alive connection fails: the GET reached
    # the fake peer twice, and was still one failed forward.
    assert fake.seen[:4] == [hang, busy, cut, reset]
    assert set(fake.seen[4:]) == {reset}
    assert (origin.hits[hang], origin.hits[busy], origin.hits[cut], origin.hits[reset]) == (0, 0, 0, 1)
