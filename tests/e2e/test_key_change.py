"""Changing the cluster key on a real 2-node in-process cluster, one node at a time, as a rolling update does.

A node that refuses a peer's hop takes the forward for a client's request from the peer's address: its site ACL,
signed URL and rate limit judge that address, so a viewer the ACL allows is refused, and its purges are refused
too. `cluster.accept_key` is honoured besides `key`: in three rolls (accept the new key; sign with it and accept
the old one; drop the old one) no two nodes ever refuse each other. The viewer connects from 127.0.0.2, the one
address the site allows; the nodes are on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgecache.config import ClusterSettings, Config, Listen, Token
from edgecache.core.keys import make_key
from edgecache.core.ring import Member, Ring
from edgecache.server import _start_admin
from tests.conftest import Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

OLD, NEW = b"old-cluster-key-0123456789abcdef!", b"new-cluster-key-0123456789abcdef!"
OPERATOR = "operator-secret-0123456789"
BODY = bytes(range(256)) * 100
REFUSED = b"this address may not use site 'videos'\n"
# (key, accepted) of node0 and node1 at each step of a rolling change from OLD to NEW: each roll changes one node.
ROLL = [
    ((OLD, ()), (OLD, ())),
    ((OLD, (NEW,)), (OLD, ())),
    ((OLD, (NEW,)), (OLD, (NEW,))),
    ((NEW, (OLD,)), (OLD, (NEW,))),
    ((NEW, (OLD,)), (NEW, (OLD,))),
    ((NEW, ()), (NEW, (OLD,))),
    ((NEW, ()), (NEW, ())),
]


@contextlib.asynccontextmanager
async def two_nodes(
    origin: Origin, tmp_path: Path, keys: tuple[tuple[bytes, tuple[bytes, ...]], ...]
) -> AsyncIterator[list[Edge]]:
    ports, admins = [free_port() for _ in keys], [free_port() for _ in keys]
    members = tuple(Member(f"node{i}", f"127.0.0.1:{ports[i]}", admin=f"127.0.0.1:{admins[i]}") for i in range(2))
    async with contextlib.AsyncExitStack() as stack:
        edges = []
        for i, (key, accepted) in enumerate(keys):
            cfg: Config = make_config(tmp_path / f"n{i}", [origin.url])
            settings = ClusterSettings(f"node{i}", key=key, accepted=accepted, nodes=members, interval=0.1, fall=1000)
            cfg = replace(
                cfg,
                listen=(Listen("127.0.0.1", ports[i]),),
                admin=Listen("127.0.0.1", admins[i]),
                cluster=settings,
                tokens=(Token("ops", OPERATOR, "operator"),),
                sites=(replace(cfg.sites[0], allow=(ip_network("127.0.0.2/32"),)),),
            )
            edge = await stack.enter_async_context(start_edge(cfg))
            admin = await _start_admin(edge.node, edge.runner)
            assert admin is not None
            stack.push_async_callback(admin.cleanup)
            edges.append(edge)
        await all_up(edges)
        yield edges


async def viewer_get(edge: Edge, path: str) -> tuple[int, bytes]:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as s,
        s.get(edge.url + path, headers={"Host": "video.test"}) as r,
    ):
        return r.status, await r.read()


async def purge(edge: Edge, path: str) -> dict[str, Any]:
    admin = edge.node.config.admin
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    body = {"url": f"http://video.test{path}"}
    async with aiohttp.ClientSession() as s, s.post(f"http://{admin}/purge", json=body, headers=headers) as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


def owned_by(i: int, prefix: str) -> str:
    """A path node i owns."""
    members = [Member(f"node{n}", "-") for n in range(2)]
    for n in range(100):
        path = f"{prefix}/{n}"
        found = Ring.of(members).owner(make_key("videos", "video.test", path, ("*",)).primary)
        if found is not None and found.id == f"node{i}":
            return path
    raise AssertionError("no such path")


@pytest.mark.parametrize("step", range(len(ROLL)))
async def test_no_two_nodes_refuse_each_other_at_any_step_of_a_key_change(
    origin: Origin, tmp_path: Path, step: int
) -> None:
    async with two_nodes(origin, tmp_path, ROLL[step]) as edges:
        for i in range(2):  # through node i, an object the other node owns: forwarded with i's signed hop
            path = owned_by(1 - i, f"/s{step}/via{i}")
            origin.put(path, BODY)
            assert await viewer_get(edges[i], path) == (200, BODY)
            assert await viewer_get(edges[i], path) == (200, BODY)
            assert origin.hits[path] == 1
            answer = await purge(edges[i], path)  # passed on under i's token for its own key
            assert (answer["confirmed"], answer["failed"]) == (2, [])


async def test_nodes_with_different_keys_and_none_accepted_refuse_the_viewer_and_each_others_purges(
    origin: Origin, tmp_path: Path
) -> None:
    """What the accepted key spares a rolling change: the owner judges the forwarding node's address."""
    async with two_nodes(origin, tmp_path, ((NEW, ()), (OLD, ()))) as edges:
        path = owned_by(1, "/refused")
        origin.put(path, BODY)
        assert await viewer_get(edges[0], path) == (403, REFUSED)
        assert origin.hits[path] == 0
        answer = await purge(edges[0], path)
        assert (answer["confirmed"], answer["failed"]) == (1, ["node1"])
