"""The access log's upstream_addr names whom a request's fetches asked, as nginx's $upstream_addr does: host:port,
those that failed first before the one that answered (an owner a forward could not reach too), and on a failure
every origin tried.

The log said `upstream: origin` for a miss, not which of a site's origins answered, and `upstream: -` with nothing
more for a 502: an operator chasing a bad origin could not tell which one it was.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.config import ClusterSettings, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

BODY = bytes(range(256)) * 64


def _records(log: Path) -> list[tuple[str, int, str, str, str | None]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["path"], r["status"], r["cache"], r["upstream"], r["upstream_addr"]) for r in lines]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_log_names_the_origins_a_request_asked(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A site of three origins: one refusing connections, one answering 503, one answering. A miss, its hit, a
    pass-through (Authorization), and an object revalidated on every request (its 304 brings no byte: upstream
    "cache", but the origins were asked)."""
    broken = Origin()
    await broken.start()
    broken.on_request = lambda request, obj: web.Response(status=503, text="overloaded")
    origin.put("/obj", BODY)
    origin.put("/stale", BODY, headers={"Cache-Control": "max-age=0"})
    dead = f"127.0.0.1:{free_port()}"
    live, sick = origin.url.removeprefix("http://"), broken.url.removeprefix("http://")
    log = tmp_path / "access.log"
    config = make_config(tmp_path / "cache", [f"http://{dead}", broken.url, origin.url])
    try:
        async with start_edge(replace(config, fast_path=fast, access_log=log)) as edge:
            passed = {"Authorization": "Bearer x"}
            asked = [("/obj", {}), ("/obj", {}), ("/obj", passed), ("/stale", {}), ("/stale", {})]
            for path, headers in asked:
                status, _, body = await edge.get(path, **headers)
                assert (status, body) == (200, BODY)
    finally:
        await broken.stop()
    tried = f"{dead}, {sick}, {live}"
    assert _records(log) == [
        ("/obj", 200, "miss", "origin", tried),
        ("/obj", 200, "hit", "cache", None),
        ("/obj", 200, "pass", "origin", tried),
        ("/stale", 200, "miss", "origin", tried),
        ("/stale", 200, "revalidated", "cache", tried),
    ]
    assert (origin.hits["/obj"], broken.hits["/obj"], origin.hits["/stale"], broken.hits["/stale"]) == (2, 2, 2, 2)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_failed_origin_request_is_logged_with_every_origin_tried(tmp_path: Path, fast: bool) -> None:
    """Every origin down: the 502 (whose answer names the site, never an address: internal) is logged with upstream
    "-" (the node's own answer) and upstream_addr the origins tried, in their order; a pass-through's too."""
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = tmp_path / "access.log"
    config = make_config(tmp_path / "cache", [f"http://{first}", f"http://{second}"])
    async with start_edge(replace(config, fast_path=fast, access_log=log)) as edge:
        for headers in ({}, {"Authorization": "Bearer x"}):
            status, _, body = await edge.get("/x", **headers)
            assert (status, body) == (502, b"origin failed: site videos: could not connect\n")
    both = f"{first}, {second}"
    assert _records(log) == [("/x", 502, "error", "-", both), ("/x", 502, "error", "-", both)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("then", ["node1", "node2"], ids=["filled-here", "next-peer"])
async def test_an_owner_that_refused_is_named_before_whoever_answered(
    origin: Origin, tmp_path: Path, fast: bool, then: str
) -> None:
    """node1, node2 and node3, which nothing listens for though the others take it to be up (health checks an
    hour apart). A key node3 owns, asked of node1: the forward is refused, and its next owner answers, node1 itself
    from the origin or node2 through a forward; the line names node3 first. A second such key, asked once node3 is
    known down, names only whom it asked."""
    members = tuple(Member(f"node{i}", f"127.0.0.1:{free_port()}") for i in (1, 2, 3))
    ring, dead, live = Ring.of(members), members[2].address, origin.url.removeprefix("http://")
    paths = []
    for path in (f"/failover/{i}" for i in range(200)):
        if [m.id for m in ring.owners(f"videos|video.test|{path}")][:2] == ["node3", then]:
            paths.append(path)
            origin.put(path, path.encode() * 50)
    log = tmp_path / "access.log"
    configs = []
    for member in members[:2]:
        settings = ClusterSettings(self_id=member.id, key=CLUSTER_KEY, nodes=members, interval=3600, timeout=0.5)
        cfg = make_config(tmp_path / member.id, [origin.url])
        port = int(member.address.rpartition(":")[2])
        configs.append(replace(cfg, listen=(Listen("127.0.0.1", port),), cluster=settings, fast_path=fast))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(start_edge(configs[1]))
        edge = await stack.enter_async_context(start_edge(replace(configs[0], access_log=log)))
        for path in paths[:2]:
            status, _, body = await edge.get(path)
            assert (status, body) == (200, path.encode() * 50)
        assert not edge.node.cluster.is_up("node3")  # type: ignore[union-attr]
    if then == "node1":
        answered, cache = live, ("miss", "origin")
    else:
        answered, cache = members[1].address, ("peer", "peer")
    assert _records(log) == [
        (paths[0], 200, *cache, f"{dead}, {answered}"),
        (paths[1], 200, *cache, answered),
    ]
    assert (origin.hits[paths[0]], origin.hits[paths[1]]) == (1, 1)
