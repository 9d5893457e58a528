"""The receiving side of a look-aside, on a real node: what the previous owner answers is stored and served only when
it is fresh here (its Age carried) and storable by a shared cache. A node of this release never answers anything
else (core.lookaside.may_use); a previous owner of an older release, or a faulty one within the signed cluster,
may. The previous owner here is a stand-in: a real aiohttp server on the member's address that takes only a signed
look-aside hop (the cluster's key) and answers from "its cache" whatever the test gives it, as a real node would
frame it (Via and Cache-Status added). Both paths (fast path and full handler); exact bytes, fields, hit counts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.config import ClusterSettings
from edgecache.core import hop
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.e2e.test_ring_continuity import lookasides
from tests.origin import Obj, Origin

SLICE = 64 * 1024
SIZE = 150_000  # 3 slices
ORIGIN_BYTES = b"o" * SIZE
PEER_BYTES = b"p" * SIZE  # the same version ("v1"), other bytes: any of them served would show
FRAMED = {"Via": "1.1 edgecache", "Cache-Status": "edgecache; hit"}  # what a real peer adds to its hit

# What an older or faulty previous owner answers from its cache, none of it fresh here or for a shared cache.
UNFIT = {
    "aged": {"Cache-Control": "public, max-age=60", "Age": "600"},  # Age far past max-age
    "expired": {"Expires": "Thu, 01 Jan 2015 00:00:00 GMT"},  # Expires before its Date
    "private": {"Cache-Control": "private, max-age=3600"},
    "no-store": {"Cache-Control": "no-store, max-age=3600"},
}


def owned(prefix: str, members: tuple[Member, ...]) -> str:
    """A path node1 owns, whose previous owner (its second) is node2: ownership is by id alone (core.ring)."""
    return next(
        p
        for p in (f"{prefix}/{i}" for i in range(200))
        if Ring.of(members).owners(f"videos|video.test|{p}")[0].id == "node1"
    )


def only_signed_lookasides(request: web.BaseRequest, obj: Obj | None) -> web.Response | None:
    """The stand-in answers only what a real node answers from its cache: a look-aside hop signed with the key."""
    primary = f"videos|video.test|{request.raw_path}"
    got = hop.verify(CLUSTER_KEY, request.headers.getall(hop.FIELD, []), "GET", primary, time.time())
    if not isinstance(got, hop.Hop) or not got.lookaside or obj is None:
        return web.Response(status=504, text="not a signed look-aside\n")
    return None


@contextlib.asynccontextmanager
async def node_and_peer(origin: Origin, tmp_path: Path, fast_path: bool) -> AsyncIterator[tuple[Edge, Origin]]:
    """node1, a real node, and node2, the stand-in previous owner, both members of node1's ring and up."""
    members = (Member("node1", f"127.0.0.1:{free_port()}"), Member("node2", f"127.0.0.1:{free_port()}"))
    peer = Origin()
    peer.on_request = only_signed_lookasides
    await peer.start(int(members[1].address.rpartition(":")[2]))
    try:
        cfg = make_config(tmp_path / "node1", [origin.url], slice_bytes=SLICE)
        # timeout 10 s: the stand-in holds a look-aside while a test lines a second request up behind it, and a
        # process paused for over a shorter timeout on a loaded machine ended the look-aside first.
        settings = ClusterSettings(
            self_id="node1", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=10, rise=2, fall=2
        )
        cfg = replace(cfg, cluster=settings, fast_path=fast_path)
        async with start_edge(cfg) as edge:
            await all_up([edge], ["node1", "node2"])
            yield edge, peer
    finally:
        await peer.stop()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_peers_answer_not_fresh_here_is_never_served_and_the_origin_is_asked(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        members = edge.node.cluster.ring.members  # type: ignore[union-attr]
        for kind, fields in UNFIT.items():
            path = owned(f"/{kind}", members)
            origin.put(path, ORIGIN_BYTES)  # public, max-age=3600, ETag "v1"
            peer.put(path, PEER_BYTES, headers={**fields, **FRAMED})
            stale, hits = lookasides("stale"), lookasides("hit")
            status, headers, body = await edge.get(path)
            assert (status, body == ORIGIN_BYTES) == (200, True), kind
            assert headers["Cache-Status"] == "edgecache; fwd=uri-miss; stored", kind
            assert int(headers["Age"]) < 10, kind  # the origin's own copy, not the peer's aged one
            assert (peer.hits[path], origin.hits[path]) == (1, 1), kind  # asked once each: the peer first
            assert (lookasides("stale") - stale, lookasides("hit") - hits) == (1, 0), kind
            status, headers, body = await edge.get(path)  # the origin's copy, stored
            assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, "edgecache; hit"), kind
            assert (peer.hits[path], origin.hits[path]) == (1, 1), kind


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_peers_fresh_answer_is_stored_with_its_age_and_the_origin_is_not_asked(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        path = owned("/fresh", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, ORIGIN_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        hits = lookasides("hit")
        for field in ('edgecache; fwd=uri-miss; stored; detail="peer-lookaside"', "edgecache; hit"):
            status, headers, body = await edge.get(path)
            assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, field)
            assert 50 <= int(headers["Age"]) < 60
        assert (peer.hits[path], origin.hits[path], lookasides("hit") - hits) == (1, 0, 1)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_viewer_that_asks_for_no_stored_answer_gets_the_origins_not_the_peers(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """The peer holds it fresh, but was asked with the key's fields alone: a viewer's no-cache is judged here."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        path = owned("/nocache", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, PEER_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        stale, hits = lookasides("stale"), lookasides("hit")
        status, headers, body = await edge.get(path, **{"Cache-Control": "no-cache"})
        assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, "edgecache; fwd=uri-miss; stored")
        assert (peer.hits[path], origin.hits[path]) == (1, 1)
        assert (lookasides("stale") - stale, lookasides("hit") - hits) == (1, 0)
        status, headers, body = await edge.get(path)
        assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, "edgecache; hit")
