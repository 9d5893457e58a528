"""A site whose origin leads back to the edge itself: the classic misconfiguration of an ISP edge, whose own DNS
answers a provider's name with the edge's address. Each fill asked the node again, each time for a new fill,
until every origin connection of the worker was taken and the first viewer waited out its timeout."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import Listen
from tests.conftest import make_config, start_edge
from tests.e2e.procs import free_port


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_a_site_whose_origin_is_the_edge_gets_508_at_the_first_loop(tmp_path: Path, fast_path: bool) -> None:
    port = free_port()
    config = make_config(tmp_path / "c", [f"http://127.0.0.1:{port}"])
    config = replace(config, listen=(Listen("127.0.0.1", port),), fast_path=fast_path)
    async with start_edge(config) as edge:
        for path in ("/video.bin", "/video.bin?again"):  # twice: nothing stored, nothing stuck
            async with asyncio.timeout(10):
                status, _, body = await edge.get(path, Range="bytes=0-99")
            assert status == 508
            assert body.startswith(b"loop: this request came from this edge;")
        async with asyncio.timeout(10):
            status, _, body = await edge.get("/page", **{"Cache-Control": "no-store"})  # a pass loops the same way
        assert status == 508
        assert body.startswith(b"loop: this request came from this edge;")


def test_every_node_of_a_cluster_has_one_token_and_a_node_alone_its_own(tmp_path: Path) -> None:
    """A provider's name may lead to any node of a cluster (DNS round robin): each must know the others' fills."""
    from edgecache.config import ClusterSettings, Member
    from edgecache.proxy.origin import loop_token

    alone = make_config(tmp_path / "c", ["http://127.0.0.1:1"])
    other = replace(alone, listen=(Listen("127.0.0.1", 2),))
    members = (Member("a", "127.0.0.1:3"), Member("b", "127.0.0.1:4"))
    a = replace(alone, cluster=ClusterSettings(self_id="a", nodes=members, key=b"k" * 32))
    b = replace(other, cluster=ClusterSettings(self_id="b", nodes=members, key=b"k" * 32))
    assert loop_token(a) == loop_token(b) != loop_token(alone) != loop_token(other)
    assert len(loop_token(alone)) == 12
    assert loop_token(a, "1" * 16) == loop_token(a)  # a cluster's nodes share one, whatever their caches


def test_two_nodes_alone_with_one_machine_name_and_one_listener_have_their_own_tokens(tmp_path: Path) -> None:
    """Containers from one definition: the same host name and listeners, each on a volume of its own. One in front
    of the other (a tiered edge) must not take the other's fills for its own loop."""
    from edgecache.proxy.origin import loop_token
    from edgecache.storage.cacheid import cache_id

    config = make_config(tmp_path / "c", ["http://127.0.0.1:1"])
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    first, second = cache_id(tmp_path / "v1"), cache_id(tmp_path / "v2")
    assert len(first) == len(second) == 16
    assert loop_token(config, first) != loop_token(config, second)
    assert cache_id(tmp_path / "v1") == first  # every worker and restart: the same
    assert cache_id(tmp_path / "gone") == ""  # a directory that takes no file: the name and listeners alone
