"""Authenticated hops on a real 3-node cluster on 127.0.0.1: only a node can skip ownership, and the node a viewer
connects to judges it (site ACL, rate limit) once, for the owner too.

Each node has an origin of its own, so every origin fetch is counted for the node that made it. Viewers connect
from other loopback addresses (127.0.0.2, ...): the nodes are on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from edgecache.config import ClusterSettings, Listen
from edgecache.core.hop import MAX_SKEW, Hop, sign
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

BODY = bytes(range(256)) * 300
FORWARDED = 'edgecache; fwd=miss; detail="peer"'  # the Cache-Status a forwarding node adds after the owner's
REFUSED = b"this address may not use site 'videos'\n"


@contextlib.asynccontextmanager
async def origins(n: int = 3) -> AsyncIterator[list[Origin]]:
    started = [Origin() for _ in range(n)]
    try:
        for o in started:
            await o.start()
        yield started
    finally:
        for o in started:
            await o.stop()


@contextlib.asynccontextmanager
async def cluster(
    origs: list[Origin], tmp_path: Path, site: dict[str, Any], **config: Any
) -> AsyncIterator[list[Edge]]:
    """Node i fetches from origs[i] and logs to tmp_path/node{i+1}.log; yielded once every node sees every one up."""
    ports = [free_port() for _ in origs]
    members = tuple(Member(f"node{i + 1}", f"127.0.0.1:{p}") for i, p in enumerate(ports))
    async with contextlib.AsyncExitStack() as stack:
        edges = []
        for i, (o, port) in enumerate(zip(origs, ports, strict=True)):
            cfg = make_config(tmp_path / f"node{i + 1}", [o.url])
            settings = ClusterSettings(
                self_id=f"node{i + 1}", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=1.0, rise=1, fall=3
            )
            cfg = replace(
                cfg,
                listen=(Listen("127.0.0.1", port),),
                cluster=settings,
                access_log=tmp_path / f"node{i + 1}.log",
                sites=(replace(cfg.sites[0], **site),),
                **config,
            )
            edges.append(await stack.enter_async_context(start_edge(cfg)))
        await all_up(edges, [m.id for m in members])
        yield edges


def primary(path: str) -> str:
    return f"videos|video.test|{path}"


def owner_index(path: str) -> int:
    members = [Member(f"node{i + 1}", "-") for i in range(3)]
    owner = Ring.of(members).owner(primary(path))
    assert owner is not None
    return int(owner.id.removeprefix("node")) - 1


def hop(
    path: str, node: str = "node1", at: float | None = None, viewer: str = "127.0.0.1", key: bytes = CLUSTER_KEY
) -> str:
    stamp = Hop(node, int(time.time() if at is None else at), "t-1", viewer, False)
    return sign(key, stamp, "GET", primary(path))


async def request(
    edge: Edge, path: str, viewer: str = "127.0.0.1", method: str = "GET", hops: tuple[str, ...] = ()
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request from the viewer's address, with these Edgecache-Hop fields."""
    fields = [("Host", "video.test"), *(("Edgecache-Hop", h) for h in hops)]
    connector = aiohttp.TCPConnector(local_addr=(viewer, 0))
    body = b"x" if method == "POST" else None
    async with (
        aiohttp.ClientSession(connector=connector, auto_decompress=False) as session,
        session.request(method, edge.url + path, headers=fields, data=body) as r,
    ):
        return r.status, CIMultiDict(r.headers), await r.read()


def hop_fields_seen(origs: list[Origin]) -> list[str]:
    return [v for o in origs for s in o.seen for k, v in s.headers.items() if k.lower() == "edgecache-hop"]


def log(tmp_path: Path, i: int) -> list[tuple[str, str, int, str]]:
    """(client, path, status, cache) of each line node i logged (read once the cluster has stopped)."""
    lines = (tmp_path / f"node{i + 1}.log").read_text().splitlines()
    return [(r["client"], r["path"], r["status"], r["cache"]) for r in map(json.loads, lines)]


async def test_a_forged_hop_is_a_clients_request_fetched_once_by_the_owner(tmp_path: Path) -> None:
    async with origins() as origs, cluster(origs, tmp_path, {}) as nodes:
        for o in origs:
            o.put("/f", BODY)
        owner = owner_index("/f")
        other, third = (owner + 1) % 3, f"node{(owner + 2) % 3 + 1}"  # a hop naming the owner: see below
        forged = [
            (f"node{owner + 1}",),  # what a node used to send
            (hop("/f", third, key=b"not the cluster's key, but long enough"),),
            (hop("/g", third),),  # a node's hop, for another object
            (hop("/f", third), hop("/f", third)),  # a node sends exactly one
            (hop("/f", third).replace("for=127.0.0.1", "for=127.0.0.9"),),
        ]
        for fields in forged:
            status, headers, body = await request(nodes[other], "/f", hops=fields)
            assert (status, body) == (200, BODY), fields
            assert headers["Cache-Status"].endswith(FORWARDED), fields  # ownership applied: sent to the owner
        # One that names the owner it would go to is a loop to this node (test_hop_sent_back): refused, not sent.
        forged_by_owner = hop("/f", f"node{owner + 1}", key=b"not the cluster's key, but long enough")
        status, _, body = await request(nodes[other], "/f", hops=(forged_by_owner,))
        assert (status, body) == (
            508,
            b"loop: the cluster's nodes disagree on this object's owner and do not honour each other's hops\n",
        )
        assert [o.hits["/f"] for o in origs] == [1 if i == owner else 0 for i in range(3)]
        assert nodes[other].node.store.peek_meta(primary("/f")) is None  # the non-owner stored nothing
        assert nodes[owner].node.store.peek_meta(primary("/f")) is not None
        # A pass-through with a forged hop goes through the owner too, and the origin sees no hop field either.
        status, _, _ = await request(nodes[other], "/post", method="POST", hops=(hop("/f", "node9"),))
        assert status == 201
        assert [o.hits["/post"] for o in origs] == [1 if i == owner_index("/post") else 0 for i in range(3)]
        # A valid hop is served where it lands (a fill, and a pass-through): its field goes no further.
        lands = next(i for i in range(3) if i != owner_index("/v"))
        for o in origs:
            o.put("/v", BODY)
        status, headers, body = await request(nodes[lands], "/v", hops=(hop("/v"),))
        assert (status, body) == (200, BODY)
        assert "peer" not in headers["Cache-Status"]
        assert [o.hits["/v"] for o in origs] == [1 if i == lands else 0 for i in range(3)]
        status, _, _ = await request(nodes[lands], "/v", method="POST", hops=(sign_post("/v"),))
        assert status == 201
        assert [o.hits["/v"] for o in origs] == [2 if i == lands else 0 for i in range(3)]
    assert hop_fields_seen(origs) == []


def sign_post(path: str) -> str:
    return sign(CLUSTER_KEY, Hop("node1", int(time.time()), "t-2", "127.0.0.1", False), "POST", primary(path))


async def test_a_replayed_hop_is_not_honoured(tmp_path: Path) -> None:
    async with origins() as origs, cluster(origs, tmp_path, {}) as nodes:
        for o in origs:
            o.put("/old", BODY)
            o.put("/new", BODY)
        for path, at in (("/old", time.time() - MAX_SKEW - 5), ("/new", time.time())):
            owner = owner_index(path)
            other = (owner + 1) % 3
            status, headers, body = await request(nodes[other], path, hops=(hop(path, at=at),))
            assert (status, body) == (200, BODY)
            honoured = path == "/new"
            assert headers["Cache-Status"].endswith(FORWARDED) != honoured, path
            fetched_by = other if honoured else owner
            assert [o.hits[path] for o in origs] == [1 if i == fetched_by else 0 for i in range(3)], path
            assert (nodes[other].node.store.peek_meta(primary(path)) is not None) == honoured, path


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_forward_whose_hop_is_too_old_is_a_clients_request_at_the_owner(
    tmp_path: Path, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node whose clock is a minute behind the others: its hops are not honoured, so what it forwards is an
    ordinary client request at the owner, which answers it as its own: a GET (on the full handler's path too), a
    POST and a DELETE. The aiohttp path's forwards used to carry the cluster's loop token in their Via, unlike the
    fast path's: the owner took each for a request come back through an origin, and answered 508."""
    async with origins() as origs, cluster(origs, tmp_path, {}, fast_path=fast) as nodes:
        for o in origs:
            o.put("/late", BODY)
        owner = owner_index("/late")
        other = nodes[(owner + 1) % 3]
        view = other.node.cluster
        assert view is not None

        def behind(
            method: str, primary: str, request_id: str, viewer: str, failover: bool, look_aside: bool = False
        ) -> str:
            stamp = Hop(view.self_id, int(time.time()) - 60, request_id, viewer, failover, look_aside)
            return sign(view.settings.key, stamp, method, primary)

        monkeypatch.setattr(view, "hop_field", behind)
        status, headers, body = await request(other, "/late")
        assert (status, body, headers["Cache-Status"]) == (200, BODY, f"edgecache; fwd=uri-miss; stored, {FORWARDED}")
        assert (await request(other, "/late", method="POST"))[0] == 201
        assert (await request(other, "/late", method="DELETE"))[0] == 204
        assert [o.hits["/late"] for o in origs] == [3 if i == owner else 0 for i in range(3)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_forwarding_node_judges_the_viewer_and_the_owner_logs_it(tmp_path: Path, fast: bool) -> None:
    """A site that allows 127.0.0.2 only: its viewer is served through the owner (whose view of the address is
    the forwarding node's, 127.0.0.1); 127.0.0.3 is refused where it connects and never reaches the owner."""
    allow = {"allow": (ip_network("127.0.0.2/32"),)}
    async with origins() as origs, cluster(origs, tmp_path, allow, fast_path=fast) as nodes:
        for o in origs:
            o.put("/a", BODY)
        owner = owner_index("/a")
        other = (owner + 1) % 3
        first = await request(nodes[other], "/a", viewer="127.0.0.2")
        assert (first[0], first[2]) == (200, BODY)
        status, headers, body = await request(nodes[other], "/a", viewer="127.0.0.2")
        assert (status, body) == (200, BODY)
        assert headers["Cache-Status"] == f"edgecache; hit, {FORWARDED}"  # the owner's hit (its fast path if on)
        assert (await request(nodes[other], "/a", viewer="127.0.0.3"))[::2] == (403, REFUSED)
        # The owner takes no hop but a node's: a refused viewer's forgeries are refused there too.
        for fields in ((f"node{other + 1}",), (hop("/a", viewer="127.0.0.2", key=b"k" * 40),)):
            assert (await request(nodes[owner], "/a", viewer="127.0.0.3", hops=fields))[::2] == (403, REFUSED)
        assert [o.hits["/a"] for o in origs] == [1 if i == owner else 0 for i in range(3)]
    assert log(tmp_path, owner) == [
        ("127.0.0.2", "/a", 200, "miss"),
        ("127.0.0.2", "/a", 200, "hit"),
        ("127.0.0.3", "/a", 403, "error"),
        ("127.0.0.3", "/a", 403, "error"),
    ]
    assert log(tmp_path, other) == [
        ("127.0.0.2", "/a", 200, "peer"),
        ("127.0.0.2", "/a", 200, "peer"),
        ("127.0.0.3", "/a", 403, "error"),
    ]


async def test_rate_limit_buckets_are_per_viewer_behind_one_forwarding_node(tmp_path: Path) -> None:
    viewers = [f"127.0.0.{i}" for i in range(2, 8)]
    # 5 requests at once per address, and next to none refilled while the test runs.
    async with origins() as origs, cluster(origs, tmp_path, {}, rate_limit=0.001, burst=5.0) as nodes:
        for o in origs:
            o.put("/r", BODY)
        owner = owner_index("/r")
        other = (owner + 1) % 3
        statuses = [(await request(nodes[other], "/r", viewer=v))[0] for v in viewers for _ in range(5)]
        assert statuses == [200] * 30
        status, _, body = await request(nodes[other], "/r", viewer=viewers[0])
        assert (status, body) == (429, b"too many requests from this address\n")
        assert [o.hits["/r"] for o in origs] == [1 if i == owner else 0 for i in range(3)]
    assert [client for client, *_ in log(tmp_path, owner)] == [v for v in viewers for _ in range(5)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_pass_forwarded_to_the_owner_names_the_viewer_alone(tmp_path: Path, fast: bool) -> None:
    """The origin got 'X-Forwarded-For: viewer, forwarding node' for a pass another node forwarded: an origin that
    reads the nearest address took the node for the client. The owner adds no address to a peer's forward."""

    async def passed(edge: Edge, method: str) -> int:  # a pass: a body, or a viewer's no-store
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        fields = {"Host": "video.test", "Cache-Control": "no-store"}
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(method, edge.url + "/p", headers=fields, data=b"x" if method == "POST" else None) as r,
        ):
            await r.read()
            return r.status

    async with origins() as origs, cluster(origs, tmp_path, {}, fast_path=fast) as nodes:
        for o in origs:
            o.put("/p", BODY)
        owner = owner_index("/p")
        for edge in (nodes[(owner + 1) % 3], nodes[owner]):  # forwarded, then straight to the owner: the same
            for method, answer in (("GET", 200), ("POST", 201), ("GET", 200)):  # the test origin creates on POST
                assert await passed(edge, method) == answer
        seen = [(s.method, s.headers.get("X-Forwarded-For")) for s in origs[owner].seen]
        assert seen == [("GET", "127.0.0.2"), ("POST", "127.0.0.2"), ("GET", "127.0.0.2")] * 2, seen
