"""Two nodes that cannot prove their hops to each other (another cluster key, or clocks over hop.MAX_SKEW apart)
and disagree on an object's owner (another node list or weights: a config rolled out to one node only).

Each takes the other's forward for a client's request (core.hop: an unproven hop is no hop), finds the other the
owner and forwards it back: before, one viewer's GET went back and forth 65 times, holding a peer connection at
each turn, until the forwarding node's 5 s timeout gave the viewer a 504, and the origin was never asked. A node
now refuses a request whose hop field names the node it would forward it to (core.admit.sent_back): 508 at once,
on both paths, one forward in all.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import ClusterSettings, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import make_config, start_edge, views_settled
from tests.e2e.procs import free_port
from tests.origin import Origin

KEYS = (b"1" * 64, b"2" * 64)


def disputed(first: tuple[Member, ...], second: tuple[Member, ...]) -> str:
    """A path node1's ring gives node2 and node2's ring gives node1."""
    for i in range(1000):
        primary = f"videos|video.test|/k{i}"
        if Ring.of(first).owner(primary).id == "node2" and Ring.of(second).owner(primary).id == "node1":  # type: ignore[union-attr]
            return f"/k{i}"
    raise AssertionError("no disputed path")


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_forward_sent_back_to_the_node_it_came_from_is_refused_at_once(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    ports = free_port(), free_port()
    views = (
        (Member("node1", f"127.0.0.1:{ports[0]}"), Member("node2", f"127.0.0.1:{ports[1]}")),
        (Member("node1", f"127.0.0.1:{ports[0]}", weight=5.0), Member("node2", f"127.0.0.1:{ports[1]}")),
    )
    path = disputed(*views)
    origin.put(path, b"x" * 100)
    async with contextlib.AsyncExitStack() as stack:
        edges = []
        for i in range(2):
            config = make_config(tmp_path / f"node{i + 1}", [origin.url])
            cluster = ClusterSettings(
                self_id=f"node{i + 1}", key=KEYS[i], nodes=views[i], interval=0.1, timeout=10.0, rise=1, fall=3
            )
            config = replace(
                config,
                fast_path=fast,
                access_log=tmp_path / f"node{i + 1}.log",
                listen=(Listen("127.0.0.1", ports[i]),),
                cluster=cluster,
            )
            edges.append(await stack.enter_async_context(start_edge(config)))
        await views_settled(edges, lambda v: all(v.is_up(m.id) for m in v.ring.members))
        for _ in range(2):
            status, _, body = await edges[0].get(path)
            assert status == 508
            assert b"loop" in body
    logged = [
        [json.loads(line)["status"] for line in (tmp_path / f"node{i + 1}.log").read_text().splitlines()]
        for i in range(2)
    ]
    assert logged == [[508, 508], [508, 508]]  # node1 relayed node2's refusal; each GET went across once
    assert origin.hits[path] == 0
