"""The purge vector stays within what peers take: origins nothing can need any more are pruned
(core.purgeprune), and no purge is lost to a prune.

Real in-process clusters with admin APIs, as tests/e2e/test_purge_catchup.py builds them. The origin changes the
object after the purge: any pre-purge byte served would show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from time import time

from prometheus_client import REGISTRY

from edgecache.cluster.purgesync import PurgeSync
from tests.e2e.test_purge_catchup import NEW, WAIT, Cluster, body_via, change, cluster, owner, warm
from tests.origin import Origin

DAY = 86400.0


def resets() -> float:
    return REGISTRY.get_sample_value("edgecache_purge_catchup_total", {"kind": "reset"}) or 0.0


def shorten(c: Cluster) -> None:
    """An origin may go 1 s after its last purge (2 days by default), and is listed as retired for 2 s more."""
    for i in c.running:
        c.edge(i).node.store.horizon = 1.0


def sync_of(c: Cluster, i: int) -> PurgeSync:
    sync = c.edge(i).node.purge_sync
    assert sync is not None
    return sync


async def until(c: Cluster, holds: Callable[[], bool]) -> None:
    """Until `holds`, judged after each purge-sync round of node 0 (WAIT at most)."""
    sync = sync_of(c, 0)
    async with asyncio.timeout(WAIT), sync.rounds:
        await sync.rounds.wait_for(holds)


async def test_a_vector_grown_past_2048_origins_is_pruned_and_a_node_cut_off_still_catches_up(
    origin: Origin, tmp_path: Path
) -> None:
    async with cluster(origin, tmp_path) as c:
        path = "/vector/a"
        x = owner(c, path)
        y = (x + 1) % 3
        await warm(c, origin, path)
        # What 2100 pod incarnations that each took a purge from an operator, days ago, leave on every node: an
        # origin each in the vector (and in the floor: their entries are no longer kept). Peers refused vectors of
        # over 2048 origins (400): purge sync stopped cluster-wide.
        gone = {f"edge-{k}~{k:08x}": 1 for k in range(2100)}
        for i in range(3):
            store = c.edge(i).node.store
            grown = {"vector": {**store.sync.vector, **gone}, "floor": {**store.sync.floor, **gone}}
            if hasattr(store.sync, "seen"):  # (absent on the code before pruning)
                grown["seen"] = {**store.sync.seen, **dict.fromkeys(gone, time() - 3 * DAY)}
            store.sync = replace(store.sync, **grown)
        await c.cut(x)
        await c.settled(lambda i, other: i != x and other != f"node{x}")  # x sees no one, and no one sees x
        change(origin, path)
        status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
        assert (status, answer["confirmed"], answer["failed"]) == (200, 2, [f"node{x}"])
        await c.heal(x)
        await c.settled()  # before pruning: x's vector was refused (400), and x doubted its cache for good
        for i in range(3):
            assert await body_via(c, i, path) == NEW
            sync = c.edge(i).node.store.sync
            assert not set(gone) & set(sync.vector)
            assert set(sync.retired) == set(gone)  # kept for another horizon, to tell a node back that lacks them
            assert sync.has(*answer["id"])
        assert origin.hits[path] == 2
        await until(c, lambda: True)  # a round more: its count is what the nodes hold now
        assert REGISTRY.get_sample_value("edgecache_purge_vector_origins", {"state": "retired"}) == len(gone)
        assert REGISTRY.get_sample_value("edgecache_purge_vector_origins", {"state": "live"}) == 1  # y's origin


async def test_an_origin_a_member_down_during_its_purge_lacks_is_kept_until_it_is_back_and_has_it(
    origin: Origin, tmp_path: Path
) -> None:
    async with cluster(origin, tmp_path) as c:
        shorten(c)
        reset_before = resets()
        path = "/down/a"
        x = owner(c, path)
        y, z = (x + 1) % 3, (x + 2) % 3
        await warm(c, origin, path)
        await c.stop(x)
        change(origin, path)
        status, answer = await c.purge(y, {"url": f"http://video.test{path}"})
        assert (status, answer["confirmed"], answer["failed"]) == (200, 2, [f"node{x}"])
        taken_by = answer["id"][0]
        # y comes back with its purge log lost (a pod on an ephemeral volume): the origin that numbered the purge
        # numbers no more, and only x, a member that is down, lacks its purge.
        log_path = c.edge(y).node.store.purge_log.path
        await c.stop(y)
        log_path.unlink()
        await c.start(y)
        shorten(c)
        await c.settled(lambda _i, other: other != f"node{x}")
        since = time()
        await until(c, lambda: time() - since > 3.0)  # three horizons, many rounds
        for i in (y, z):
            assert c.edge(i).node.store.sync.vector.get(taken_by) == 1  # x may need it: kept
        await c.start(x)
        shorten(c)
        await c.settled()
        assert await body_via(c, x, path) == NEW
        assert origin.hits[path] == 2
        # x has it now: every node prunes it.
        await until(c, lambda: all(taken_by not in c.edge(i).node.store.sync.vector for i in range(3)))
        since = time()
        await until(c, lambda: time() - since > 3.0)  # until every node has forgotten it (2 horizons)
        await c.settled()
        for i in range(3):
            assert taken_by not in c.edge(i).node.store.sync.vector
            assert taken_by not in c.edge(i).node.store.sync.retired
            assert await body_via(c, i, path) == NEW
        assert origin.hits[path] == 2
        assert resets() == reset_before  # no node took another for one that lacks the origin
