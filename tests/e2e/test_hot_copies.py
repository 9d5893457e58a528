"""A hot object's copy at a node that does not own it, when the cluster changes under it: the heat gone by the time
the copy's fill has its head, and the owner gone once the copy is answered from memory. Both paths, the same
answers, filled from the node the full handler fills from."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecache.cluster.view import ClusterView
from edgecache.config import ClusterSettings, Listen
from edgecache.core import popularity
from edgecache.core.forward import OriginRequest
from edgecache.core.ring import Member, Ring
from edgecache.proxy import clusterfill
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.origin import OriginClient, OriginResponse
from edgecache.storage.store import slice_name
from tests.conftest import CLUSTER_KEY, make_config, start_edge
from tests.e2e.procs import free_port
from tests.e2e.test_cluster import STALL
from tests.e2e.test_hot_spread import COPY_MISS, HOT
from tests.e2e.test_purge import cluster
from tests.e2e.test_relay import ScriptedPeer
from tests.origin import Origin
from tests.wire import fast_path_outcomes

FromOwner = list[str]  # the members a copy's fill asked, in order


def asked_of_owners(
    monkeypatch: pytest.MonkeyPatch, reached: asyncio.Event | None = None, release: asyncio.Event | None = None
) -> FromOwner:
    """Which owners copies are filled from; each fill sets `reached`, then waits for `release`, when given."""
    asked: FromOwner = []
    real = clusterfill.from_owner

    async def watched(
        view: ClusterView,
        origin: OriginClient,
        req: FillRequest,
        sent: OriginRequest,
        *judged: Any,
    ) -> OriginResponse | None:
        assert req.spread_from is not None
        asked.append(req.spread_from.id)
        if reached is not None:
            reached.set()
        if release is not None:
            await release.wait()
        return await real(view, origin, req, sent, *judged)

    monkeypatch.setattr(clusterfill, "from_owner", watched)
    return asked


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_copys_fill_answers_its_request_though_the_object_is_no_longer_hot(
    origin: Origin, tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = b"h" * 300_000
    origin.put(HOT, body)
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{HOT}")
    assert owner is not None
    reached, release = asyncio.Event(), asyncio.Event()
    asked = asked_of_owners(monkeypatch, reached, release)
    async with cluster(origin, tmp_path, fast) as nodes:
        edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
        before = fast_path_outcomes()
        for _ in range(popularity.THRESHOLD - 1):
            assert (await edge.get(HOT))[::2] == (200, body)
        copied = asyncio.create_task(edge.get(HOT))  # hot now: this node's copy is filled from the owner
        async with asyncio.timeout(10):
            await reached.wait()
        edge.node.shared.popular = popularity.Gate()  # its count dropped meanwhile (a full table, or cooled)
        release.set()
        status, headers, got = await copied
        assert (status, got, headers["Cache-Status"]) == (200, body, COPY_MISS)
        assert (asked, origin.hits[HOT]) == ([owner.id], 1)
        if fast:
            assert fast_path_outcomes()["handed_off"] == before["handed_off"]


BODY = b"x" * 3000
ANSWER = (
    b'HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nCache-Control: public, max-age=3600\r\nETag: "v1"\r\n'
    b"Content-Type: application/octet-stream\r\nCache-Status: edgecache; hit\r\n\r\n" + BODY
)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(ANSWER)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_slice_a_copy_lacks_comes_from_the_next_owner_once_its_owner_is_down(
    origin: Origin, tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remembered answers of a copy name the owner its missing slices are fetched from: when that owner goes
    down, the next one, as the full handler decides it, never the node that is down or the origin."""
    asked = asked_of_owners(monkeypatch)
    port = free_port()
    async with ScriptedPeer({}) as node2, ScriptedPeer({}) as node3:
        members = (
            Member("node1", f"127.0.0.1:{port}"),
            Member("node2", f"127.0.0.1:{node2.port}"),
            Member("node3", f"127.0.0.1:{node3.port}"),
        )
        ring = Ring.of(members)
        names = (f"/h{i}.bin" for i in range(2000))
        path = next(p for p in names if [m.id for m in ring.owners(f"videos|video.test|{p}")][:2] == ["node2", "node3"])
        node2.scripts[path] = node3.scripts[path] = answer
        # cluster.timeout is also the pause watch's limit: a pause of the loop past it doubts the copy, which is then
        # revalidated with its owner, one more fill from it than the test counts.
        settings = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=STALL, fall=1_000_000)
        config = replace(
            make_config(tmp_path, [origin.url]), listen=(Listen("127.0.0.1", port),), cluster=settings, fast_path=fast
        )
        async with start_edge(config) as edge:
            view = edge.node.cluster
            assert view is not None
            async with asyncio.timeout(10):
                await view.wait_for(lambda: view.is_up("node2") and view.is_up("node3"))
            for _ in range(popularity.THRESHOLD + 2):  # forwarded, then the copy's miss, then its hits
                assert (await edge.get(path))[::2] == (200, BODY)
            assert asked == ["node2"]
            await node2.__aexit__()  # node2 stops
            view.failed("node2", "the test stopped it")
            key = f"videos|video.test|{path}"
            meta = edge.node.store.peek_meta(key)
            assert meta is not None
            edge.node.store.memory.delete(slice_name(key, meta.slice_version, 0))
            assert (await edge.get(path))[::2] == (200, BODY)
            assert (asked, origin.hits[path]) == (["node2", "node3"], 0)


async def test_a_purge_met_while_a_doubted_copy_is_revalidated_gives_the_new_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    """A node that may have missed purges (a pause) revalidates its hot copy with the owner, on the fast path,
    which hands the fill to the full handler (a copy's fill is its); the purge it missed arrives while the owner
    fetches the new version. The full handler looks the object up under the purged key, where the copy's slices are
    not: the stored entry the fill revalidated is not what it holds any more. It used to take that entry as fresh
    again on each of its three tries, read its slice from the fill of the new version, and answer 502 ("kept
    changing"); it looks the object up afresh, and answers the new bytes."""
    old, new = b"o" * 50_000, b"n" * 60_000
    origin.put(HOT, old)
    key = f"videos|video.test|{HOT}"
    owner_id = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(key)
    assert owner_id is not None
    async with cluster(origin, tmp_path) as nodes:
        edges = [n.edge for n in nodes]
        owner = next(e for e in edges if e.node.cluster and e.node.cluster.self_id == owner_id.id)
        edge = next(e for e in edges if e.node.cluster and e.node.cluster.self_id != owner_id.id)
        for _ in range(popularity.THRESHOLD + 1):
            assert (await edge.get(HOT))[::2] == (200, old)
        assert (await edge.get(HOT))[1]["Cache-Status"] == "edgecache; hit"  # its copy
        origin.put(HOT, new, etag='"v2"')
        await owner.node.store.invalidate(key)  # the purge, applied at the owner (and the other node)
        edge.node.store.doubt(time.time())  # this node was paused meanwhile: it may have missed it
        origin.gate = asyncio.Event()
        asked = len(origin.seen)
        answer = asyncio.create_task(edge.get(HOT))
        async with asyncio.timeout(10):
            await origin.wait_for_requests(asked + 1)  # the copy's revalidation, at the owner's origin
        await edge.node.store.invalidate(key)  # the purge reaches this node now: caught up
        edge.node.store.doubt(None)
        origin.gate.set()
        status, headers, body = await answer
        assert (status, body == new) == (200, True), (status, headers.get("Cache-Status"), body[:100])
        assert (await edge.get(HOT))[::2] == (200, new)


@pytest.mark.parametrize("asks", ["Cache-Control: no-cache", "Cache-Control: max-age=0", "Pragma: no-cache"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_request_for_the_origins_validation_at_a_hot_copy_reaches_the_origin(
    origin: Origin, tmp_path: Path, fast: bool, asks: str
) -> None:
    """A hot copy at a node that does not own the object, and a request that asks for the origin's validation: the
    copy was revalidated with the owner, whose cache answered 304 ("fwd=request; fwd-status=304"), and the origin
    was never asked, so the request got the old bytes though the origin had new ones. It is the owner's now, which
    revalidates with the origin. Found by fuzzing a 2-node cluster."""
    origin.put(HOT, b"old bytes")
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{HOT}")
    assert owner is not None
    async with cluster(origin, tmp_path, fast) as nodes:
        edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
        for _ in range(popularity.THRESHOLD + 1):
            assert (await edge.get(HOT))[::2] == (200, b"old bytes")
        assert (await edge.get(HOT))[1]["Cache-Status"] == "edgecache; hit"  # its own copy
        origin.put(HOT, b"new bytes", etag='"v2"')
        name, _, value = asks.partition(": ")
        for n in (1, 2):
            status, _, body = await edge.get(HOT, **{name: value})
            assert (status, body, origin.hits[HOT]) == (200, b"new bytes", 1 + n)
