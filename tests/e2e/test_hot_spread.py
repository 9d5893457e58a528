"""Hot objects spread on a real in-process 3-node cluster: a node that does not own an object it sees asked
often keeps a copy in memory and answers it itself, so the owner is not the only node serving it; a purge
removes every copy.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgecache import metrics
from edgecache.core import hop, popularity
from edgecache.core.keys import digest
from edgecache.core.ring import Member, Ring
from edgecache.storage.store import slice_name
from tests.conftest import Edge
from tests.e2e.test_purge import cluster, purge
from tests.origin import Origin
from tests.wire import fast_path_outcomes

HOT = "/hot.bin"
PEER = 'edgecache; fwd=miss; detail="peer"'  # the forwarding node's entry in a forwarded answer's Cache-Status
COPY_MISS = 'edgecache; fwd=uri-miss; stored; detail="peer"'  # a copy's miss, filled from the owner
MIX = [f"/mix/{i}.bin" for i in range(20)]


def forwarded(peer: str) -> float:
    """Requests of site videos (the hot object's alone here) that nodes sent to `peer`."""
    return metrics.PEER_FORWARDED.labels(peer, "videos").wrapped._value.get()  # type: ignore[attr-defined, no-any-return]


async def play(origin: Origin, edges: list[Edge], requests: int) -> int:
    """`requests` requests through every node in turn, 30% of them for the hot object and the rest for 20 others
    (of another site); every body exact. How many asked for the hot object."""
    asked = 0
    for i in range(requests):
        edge = edges[i % 3]
        if i % 10 in (0, 3, 6):
            status, _, body = await edge.get(HOT)
            assert (status, body) == (200, origin.objects[HOT].data), i
            asked += 1
        else:
            path = MIX[i % len(MIX)]
            status, _, body = await edge.get(path, host="other.test")
            assert (status, body) == (200, origin.objects[path].data), (i, path)
    return asked


async def test_a_hot_object_is_answered_by_every_node_and_purged_everywhere(origin: Origin, tmp_path: Path) -> None:
    origin.put(HOT, b"h" * 300_000)
    for i, p in enumerate(MIX):
        origin.put(p, bytes([i]) * 20_000)
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{HOT}")
    assert owner is not None
    async with cluster(origin, tmp_path) as nodes:
        edges = [n.edge for n in nodes]
        # Warm-up: each node sees the hot object asked more than popularity.THRESHOLD (32) times.
        assert await play(origin, edges, 360) > 3 * popularity.THRESHOLD
        before = forwarded(owner.id)
        asked = await play(origin, edges, 300)
        # Two thirds of these requests reached a node that does not own the object: at most half reach the owner.
        assert forwarded(owner.id) - before <= asked / 2, (forwarded(owner.id) - before, asked)
        assert origin.hits[HOT] == 1
        others = [e for e in edges if e.node.cluster is not None and e.node.cluster.self_id != owner.id]
        for e in others:  # a copy of its own, in memory only
            status, headers, body = await e.get(HOT)
            assert (status, body, headers["Cache-Status"]) == (200, origin.objects[HOT].data, "edgecache; hit")
            key = f"videos|video.test|{HOT}"
            meta = e.node.store.peek_meta(key)
            assert meta is not None
            assert await e.node.store.disk.get("m:" + digest(key)) is None
            assert await e.node.store.slice_from_disk(key, meta, 0) is None
        # A purge reaches every copy: the next request to any node gets the new bytes.
        origin.put(HOT, b"n" * 300_000, etag='"v2"')
        status, _ = await purge(nodes[0], {"url": f"http://video.test{HOT}"})
        assert status == 200
        for e in edges:
            status, _, body = await e.get(HOT)
            assert (status, body) == (200, b"n" * 300_000)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_request_that_makes_an_object_hot_fills_the_copy_from_its_owner(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """The request that makes an object hot at a node that does not own it is that node's miss: its copy is filled
    from the owner (never the origin) and this request answered from that fill, as the full handler answers it;
    the next ones are the copy's hits. Twice: a whole object, then a range of another."""
    data = {path: bytes([n]) * 300_000 for n, path in enumerate((HOT, "/hot2.bin"))}
    for path, body in data.items():
        origin.put(path, body)
    async with cluster(origin, tmp_path, fast) as nodes:
        for path, body in data.items():
            owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{path}")
            assert owner is not None
            edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
            asked = {"Range": "bytes=1000-1999"} if path != HOT else {}
            want = body[1000:2000] if asked else body
            before = fast_path_outcomes()
            code = 206 if asked else 200
            seen = set()
            for _ in range(popularity.THRESHOLD - 1):  # forwarded to the owner, which fills once
                status, headers, got = await edge.get(path, **asked)
                assert (status, got) == (code, want)
                seen.add(headers["Cache-Status"])
            assert seen == {f"edgecache; fwd=uri-miss; stored, {PEER}", f"edgecache; hit, {PEER}"}
            status, headers, got = await edge.get(path, **asked)  # hot now: this node's copy, filled from the owner
            assert (status, got, headers["Cache-Status"]) == (code, want, COPY_MISS)
            status, headers, got = await edge.get(path, **asked)
            assert (status, got, headers["Cache-Status"]) == (code, want, "edgecache; hit")
            assert origin.hits[path] == 1
            after = fast_path_outcomes()
            if fast:
                assert after["handed_off"] - before["handed_off"] == 0
                assert after["forwarded"] - before["forwarded"] == popularity.THRESHOLD - 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_slice_a_copy_lacks_is_fetched_from_the_owner(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A hot copy that has lost a slice from memory gets it again from the owner, for memory only: never from the
    origin, and never onto this node's disk."""
    body = bytes(range(256)) * 10_000  # three slices of 1 MiB
    origin.put(HOT, body)
    key = f"videos|video.test|{HOT}"
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(key)
    assert owner is not None
    async with cluster(origin, tmp_path, fast) as nodes:
        edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
        for _ in range(popularity.THRESHOLD + 1):
            status, _, got = await edge.get(HOT)
            assert (status, got) == (200, body)
        store = edge.node.store
        meta = store.peek_meta(key)
        assert meta is not None
        store.memory.delete(slice_name(key, meta.slice_version, 1))
        for _ in range(2):
            status, _, got = await edge.get(HOT, Range="bytes=1048000-1049999")
            assert (status, got) == (206, body[1048000:1050000])
        assert origin.hits[HOT] == 1
        assert await store.slice_from_disk(key, meta, 1) is None


class CountingGate(popularity.Gate):
    """The popularity gate, counting the requests it is asked to count."""

    def __init__(self) -> None:
        super().__init__()
        self.asks = 0

    def asked(self, key: str, now: float) -> bool:
        self.asks += 1
        return super().asked(key, now)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_each_request_counts_once_towards_an_objects_heat(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A request the forward memo finds hot is decided for this node's copy without asking the gate again. The one
    exception left: the fast path decides the request that makes the object hot once more for each of the two disk
    lookups its copy's miss makes first (its record, then its metadata), and each decision asks the gate."""
    body = b"h" * 300_000
    origin.put(HOT, body)
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{HOT}")
    assert owner is not None
    async with cluster(origin, tmp_path, fast) as nodes:
        edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
        gate = edge.node.shared.popular = CountingGate()
        counts = []
        for _ in range(popularity.THRESHOLD + 3):
            assert (await edge.get(HOT))[::2] == (200, body)
            counts.append(gate.asks)
        before = list(range(1, popularity.THRESHOLD))
        assert counts == before + ([34, 35, 36, 37] if fast else [32, 33, 34, 35])


async def test_a_copy_the_owner_answers_508_is_filled_from_the_origin(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock is a minute behind the owner's: its hops are outside MAX_SKEW there, so not honoured,
    and its copy's fill (whose Via names the cluster, as every fill's does) is a request that came back to the
    edge, answered 508. The owner did not serve it: the copy is filled from the origin, as when the owner cannot be
    asked, and no viewer gets the 508 (each request after the object is hot got it, and nothing was stored)."""
    body = b"s" * 50_000
    origin.put(HOT, body)
    owner = Ring.of(Member(f"node{i}", "-") for i in (1, 2, 3)).owner(f"videos|video.test|{HOT}")
    assert owner is not None
    async with cluster(origin, tmp_path) as nodes:
        edge = next(n.edge for n in nodes if n.edge.node.cluster and n.edge.node.cluster.self_id != owner.id)
        view = edge.node.cluster
        assert view is not None

        def behind(
            method: str, primary: str, request_id: str, viewer: str, failover: bool, look_aside: bool = False
        ) -> str:
            stamp = hop.Hop(view.self_id, int(time.time()) - 60, request_id, viewer, failover, look_aside)
            return hop.sign(view.settings.key, stamp, method, primary)

        monkeypatch.setattr(view, "hop_field", behind)
        errors = metrics.PEER_ERRORS.labels(owner.id, "5xx").wrapped._value.get()
        refused = metrics.PEER_COPIES.labels(owner.id, "error").wrapped._value.get()
        statuses = []
        for _ in range(popularity.THRESHOLD + 3):
            status, headers, got = await edge.get(HOT)
            statuses.append((status, got == body, headers["Cache-Status"]))
        assert statuses[-4:] == [
            (200, True, "edgecache; fwd=uri-miss; stored"),  # from the origin
            *[(200, True, "edgecache; hit")] * 3,
        ]
        assert {s[:2] for s in statuses} == {(200, True)}, statuses
        assert origin.hits[HOT] == 2  # the owner's fill, and the copy's
        assert metrics.PEER_ERRORS.labels(owner.id, "5xx").wrapped._value.get() - errors == 1
        assert metrics.PEER_COPIES.labels(owner.id, "error").wrapped._value.get() - refused == 1
