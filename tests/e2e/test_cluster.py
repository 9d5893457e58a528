"""A real 3-node cluster on 127.0.0.1: one origin fetch per object whichever node is asked; failover and return."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp

from edgecache import metrics
from edgecache.config import ClusterSettings, Config, Listen
from edgecache.core.hop import Hop, sign
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin
from tests.wire import fast_path_outcomes

# cluster.timeout of the nodes a test runs in this process, on one loop: a bound no test step outlasts, so it catches
# a hang only. It is also the longest the loop may go unrun before a node takes itself for paused (purgesync: every
# copy doubted, so revalidated: a second origin request) and how long a health check may take (fall: a peer down,
# another owner, another fetch). At 0.5 s, a full collection or a starved process on a loaded machine was such a
# pause. Tests of the timeout itself set their own.
STALL = 30.0


def cluster_configs(origin: Origin, tmp_path: Path) -> list[Config]:
    ports = [free_port() for _ in range(3)]
    members = tuple(Member(f"node{i + 1}", f"127.0.0.1:{p}") for i, p in enumerate(ports))
    configs = []
    for i, port in enumerate(ports):
        cfg = make_config(tmp_path / f"node{i + 1}", [origin.url])
        settings = ClusterSettings(
            self_id=f"node{i + 1}", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=STALL, rise=2, fall=2
        )
        configs.append(replace(cfg, listen=(Listen("127.0.0.1", port),), cluster=settings))
    return configs


@contextlib.asynccontextmanager
async def started(configs: list[Config]) -> AsyncIterator[list[Edge]]:
    """The nodes, yielded once every node sees every other up: a node probed before it listened is down until
    its next good checks, and a request sent meanwhile would fail over to another owner."""
    async with contextlib.AsyncExitStack() as stack:
        edges = [await stack.enter_async_context(start_edge(c)) for c in configs]
        ids = [c.cluster.self_id for c in configs if c.cluster is not None]
        await all_up(edges, ids)
        yield edges


def owner_of(configs: list[Config], path: str) -> str:
    ring = Ring.of(configs[0].cluster.nodes)  # type: ignore[union-attr]
    member = ring.owner(f"videos|video.test|{path}")
    assert member is not None
    return member.id


async def test_each_object_fetched_once_whichever_node_is_asked(origin: Origin, tmp_path: Path) -> None:
    configs = cluster_configs(origin, tmp_path)
    paths = [f"/obj/{i}.bin" for i in range(30)]
    for i, p in enumerate(paths):
        origin.put(p, bytes([i]) * (1000 + 70_000 * (i % 4)))
    async with started(configs) as nodes:
        for round_ in range(2):
            for i, p in enumerate(paths):
                node = nodes[(i + round_) % 3]
                status, headers, body = await node.get(p)
                assert (status, body) == (200, origin.objects[p].data)
        for p in paths:
            assert origin.hits[p] == 1, p
        # Each object lives on its owner only.
        for p in paths:
            owner = owner_of(configs, p)
            for n in nodes:
                meta = n.node.store.peek_meta(f"videos|video.test|{p}")
                assert (meta is not None) == (n.node.cluster.self_id == owner), (p, n.node.cluster.self_id)  # type: ignore[union-attr]
        # A forwarded answer says so, and carries the owner's own Cache-Status before ours.
        p = next(p for p in paths if owner_of(configs, p) != "node1")
        _, headers, _ = await nodes[0].get(p)
        assert headers["Cache-Status"] == 'edgecache; hit, edgecache; fwd=miss; detail="peer"'


async def test_a_dead_node_fails_over_and_its_keys_come_back(origin: Origin, tmp_path: Path) -> None:
    configs = cluster_configs(origin, tmp_path)
    paths = [f"/k/{i}" for i in range(60)]
    for p in paths:
        origin.put(p, p.encode() * 100)
    node3_keys = [p for p in paths if owner_of(configs, p) == "node3"]
    assert len(node3_keys) > 5
    async with started(configs[:2]) as (n1, n2):
        async with start_edge(configs[2]):
            # Until both see node3 up, its keys would be filled by their next owner and be hits there later.
            async with asyncio.timeout(10):
                for n in (n1, n2):
                    await n.node.cluster.wait_for(lambda n=n: n.node.cluster.is_up("node3"))  # type: ignore[union-attr,misc]
            for p in paths:
                assert (await n1.get(p))[2] == p.encode() * 100
            assert all(origin.hits[p] == 1 for p in paths)
        # node3 is gone: its keys go to their next owner at the first refused connection; no client error.
        peer_down_before = metrics.MISSES.labels("videos", "peer-down").wrapped._value.get()
        handed = fast_path_outcomes()["handed_off"]
        for p in paths:
            status, _, body = await n1.get(p)
            assert (status, body) == (200, p.encode() * 100), p
        assert not n1.node.cluster.is_up("node3")  # type: ignore[union-attr]
        # The forward that found node3 gone is decided again for the next owner, and every miss of node3's keys is
        # filled on the fast path by the node standing in (n1 itself, or n2 through a hop): none handed over.
        assert fast_path_outcomes()["handed_off"] == handed
        handed = fast_path_outcomes()["handed_off"]
        for p in node3_keys:  # n1 stands in for node3 on its fast path, or forwards to n2, which does (fo=1)
            status, _, body = await n1.get(p)
            assert (status, body) == (200, p.encode() * 100), p
        assert fast_path_outcomes()["handed_off"] == handed
        peer_down = metrics.MISSES.labels("videos", "peer-down").wrapped._value.get() - peer_down_before
        assert peer_down == len(node3_keys)  # those misses are classified "peer-down", not "cold"
        assert all(origin.hits[p] == 2 for p in node3_keys)  # refetched once by the next owner
        assert all(origin.hits[p] == 1 for p in paths if p not in node3_keys)
        # node3 returns with its cache: the health checks bring it back within `rise` intervals.
        async with start_edge(configs[2]):
            async with asyncio.timeout(10):  # health checks every 0.1 s, rise 2: well within
                for n in (n1, n2):
                    await n.node.cluster.wait_for(lambda n=n: n.node.cluster.is_up("node3"))  # type: ignore[union-attr,misc]
            before = metrics.PEER_FORWARDED.labels("node3", "videos").wrapped._value.get()
            for p in node3_keys:
                status, _, body = await n2.get(p)
                assert (status, body) == (200, p.encode() * 100)
            assert metrics.PEER_FORWARDED.labels("node3", "videos").wrapped._value.get() - before == len(node3_keys)
            assert all(origin.hits[p] == 2 for p in node3_keys)  # served from node3's own disk


async def test_forwarded_requests_are_never_forwarded_again(origin: Origin, tmp_path: Path) -> None:
    configs = cluster_configs(origin, tmp_path)
    origin.put("/loop", b"x")
    owner = owner_of(configs, "/loop")
    async with started(configs) as nodes:
        not_owner = next(n for n in nodes if n.node.cluster.self_id != owner)  # type: ignore[union-attr]
        # A hop signed with the cluster's key (a forged one is a client's: tests/e2e/test_hops.py).
        stamp = Hop(owner, int(time.time()), "t-1", "127.0.0.1", False)
        hop = sign(CLUSTER_KEY, stamp, "GET", "videos|video.test|/loop")
        async with aiohttp.ClientSession() as s:
            url = f"{not_owner.url}/loop"
            async with s.get(url, headers={"Host": "video.test", "Edgecache-Hop": hop}) as r:
                assert r.status == 200
                assert "peer" not in r.headers["Cache-Status"]  # served where it landed
        assert origin.hits["/loop"] == 1


def phantom_owner(origin: Origin, tmp_path: Path, burst: float | None = None) -> tuple[Config, list[str]]:
    """node1 alone, whose ring names node3, which it takes to be up (health checks an hour apart) though nothing
    listens there; and three of node3's keys, on the origin."""
    members = (Member("node1", f"127.0.0.1:{free_port()}"), Member("node3", f"127.0.0.1:{free_port()}"))
    ring = Ring.of(members)
    keys = [p for p in (f"/gone/{i}" for i in range(100)) if ring.owner(f"videos|video.test|{p}").id == "node3"]  # type: ignore[union-attr]
    for p in keys[:3]:
        origin.put(p, p.encode() * 50)
    settings = ClusterSettings(
        self_id="node1", key=CLUSTER_KEY, nodes=members, interval=3600, timeout=STALL, rise=2, fall=2
    )
    cfg = make_config(tmp_path / "node1", [origin.url])
    cfg = replace(cfg, listen=(Listen("127.0.0.1", int(members[0].address.rpartition(":")[2])),), cluster=settings)
    if burst is not None:
        cfg = replace(cfg, rate_limit=0.001, burst=burst)
    return cfg, keys[:3]


async def test_an_owner_found_gone_is_stood_in_for_on_the_fast_path_for_one_token(
    origin: Origin, tmp_path: Path
) -> None:
    """node3's key is forwarded, the connection is refused: node3 is down at once, and the request is decided
    again for its next owner, node1 itself, on the fast path, with the one rate token it spent (burst 2): a second
    key of node3's is node1's at once, and a third request is refused 429."""
    cfg, keys = phantom_owner(origin, tmp_path, burst=2.0)
    peer_down, handed = (
        metrics.MISSES.labels("videos", "peer-down").wrapped._value.get(),
        fast_path_outcomes()["handed_off"],
    )
    async with start_edge(cfg) as edge:
        answers = [await edge.get(p) for p in keys]
        assert [(status, body) for status, _, body in answers[:2]] == [(200, p.encode() * 50) for p in keys[:2]]
        assert answers[2][0] == 429
        assert not edge.node.cluster.is_up("node3")  # type: ignore[union-attr]
    assert metrics.MISSES.labels("videos", "peer-down").wrapped._value.get() - peer_down == 2
    assert fast_path_outcomes()["handed_off"] == handed
    assert [origin.hits[p] for p in keys] == [1, 1, 0]


async def test_a_forward_found_gone_and_decided_twice_more_spends_one_token(origin: Origin, tmp_path: Path) -> None:
    """Burst 1: the forward spends the token; decided again once node3 is found gone, the request (the first miss
    of an object whose answer names a Vary its fill did not send) is decided a third time once that answer is in,
    as its variant's miss, and asks the origin again with the field the Vary names: the limiter is asked once."""
    cfg, keys = phantom_owner(origin, tmp_path, burst=1.0)
    origin.put(keys[0], b"v", headers={"Cache-Control": "max-age=60", "Vary": "X-Device"})
    handed = fast_path_outcomes()["handed_off"]
    async with start_edge(cfg) as edge:
        status, _, body = await edge.get(keys[0], **{"X-Device": "tv"})
    assert (status, body) == (200, b"v")
    assert fast_path_outcomes()["handed_off"] == handed
    assert origin.hits[keys[0]] == 2


async def test_a_stand_ins_hit_is_the_owners_again_once_it_is_back(origin: Origin, tmp_path: Path) -> None:
    """node1 stands in for node3 (a miss, then a hit it remembers); node3 is seen up again: the next request is
    forwarded to it (nothing listens there still, so it is found gone again), not answered from the memo."""
    cfg, keys = phantom_owner(origin, tmp_path)
    async with start_edge(cfg) as edge:
        cluster = edge.node.cluster
        assert cluster is not None
        statuses = [(await edge.get(keys[0]))[1]["Cache-Status"] for _ in range(2)]
        assert statuses == ["edgecache; fwd=uri-miss; stored", "edgecache; hit"]
        assert not cluster.is_up("node3")
        refused = metrics.PEER_ERRORS.labels("node3", "connect").wrapped._value.get()  # type: ignore[attr-defined]
        for _ in range(2):  # rise 2
            cluster.record("node3", True)
        assert cluster.is_up("node3")
        status, _, body = await edge.get(keys[0])
        assert (status, body) == (200, keys[0].encode() * 50)
        assert not cluster.is_up("node3")  # asked, and found gone again
        assert metrics.PEER_ERRORS.labels("node3", "connect").wrapped._value.get() == refused + 1  # type: ignore[attr-defined]
    assert origin.hits[keys[0]] == 1
