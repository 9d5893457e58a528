"""The receiving side of a hot object's copy (core.popularity), on a real node: the owner answers the copy's fill
from its cache, asked with the key's fields alone, so what it answers is judged here as a look-aside's answer is
(core.lookaside.fresh_here): fresh here with its Age carried, and for the viewer's own request (its max-age,
min-fresh), else the origin is asked. The owner is a stand-in (a real aiohttp server on the member's address that
takes only a signed hop with the cluster's key), answering "from its cache" what the test gives it, framed as a
real node frames it. node1 makes every object hot at its first request. Both paths; exact bytes, fields, hits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core import hop, popularity
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge
from tests.e2e.test_lookaside_receive import FRAMED, ORIGIN_BYTES, PEER_BYTES, UNFIT, node_and_peer
from tests.origin import Obj, Origin
from tests.samples import sample_value

COPY_MISS = 'edgecache; fwd=uri-miss; stored; detail="peer"'  # the copy's fill, answered by the owner
ORIGIN_MISS = "edgecache; fwd=uri-miss; stored"  # the copy's fill, answered by the origin


def owned_by_peer(prefix: str, members: tuple[Member, ...]) -> str:
    """A path node2 (the stand-in) owns, so node1 keeps a copy of it when it is hot: ownership is by id alone."""
    return next(
        p
        for p in (f"{prefix}/{i}" for i in range(200))
        if Ring.of(members).owners(f"videos|video.test|{p}")[0].id == "node2"
    )


def only_signed_hops(request: web.BaseRequest, obj: Obj | None) -> web.Response | None:
    """The stand-in owner answers what a node's hop (a forward, or a copy's fill) asks, signed with the key."""
    primary = f"videos|video.test|{request.raw_path}"
    got = hop.verify(CLUSTER_KEY, request.headers.getall(hop.FIELD, []), "GET", primary, time.time())
    if not isinstance(got, hop.Hop) or got.lookaside or obj is None:
        return web.Response(status=504, text="not a signed hop\n")
    return None


def hot_at_once(edge: Edge) -> None:
    edge.node.shared.popular = popularity.Gate(threshold=1)


def copy_fills() -> dict[str, float]:
    """edgecache_peer_copy_fills_total for the stand-in owner, by outcome."""
    name = "edgecache_peer_copy_fills_total"
    return {o: sample_value(name, {"peer": "node2", "outcome": o}) or 0.0 for o in ("hit", "stale", "error", "behind")}


def counted(before: dict[str, float], **more: int) -> dict[str, float]:
    """`before`, with `more` added to its outcomes."""
    return {o: n + more.get(o, 0) for o, n in before.items()}


@pytest.mark.parametrize("kind", ["aged", "expired"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_owners_answer_stale_here_is_not_a_copy_and_the_origin_is_asked(
    origin: Origin, tmp_path: Path, fast_path: bool, kind: str
) -> None:
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        members = edge.node.cluster.ring.members  # type: ignore[union-attr]
        path = owned_by_peer(f"/{kind}", members)
        origin.put(path, ORIGIN_BYTES)  # public, max-age=3600, ETag "v1"
        peer.put(path, PEER_BYTES, headers={**UNFIT[kind], **FRAMED})
        before = copy_fills()
        status, headers, body = await edge.get(path)
        assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, ORIGIN_MISS), kind
        assert int(headers["Age"]) < 10, kind
        assert (peer.hits[path], origin.hits[path]) == (1, 1), kind
        assert copy_fills() == counted(before, stale=1), kind
        status, headers, body = await edge.get(path)  # the copy, the origin's
        assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, "edgecache; hit"), kind
        assert (peer.hits[path], origin.hits[path]) == (1, 1), kind


@pytest.mark.parametrize("directive", ["max-age=10", "min-fresh=3590"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_owners_copy_older_than_the_viewer_allows_is_not_served_and_the_origin_is_asked(
    origin: Origin, tmp_path: Path, fast_path: bool, directive: str
) -> None:
    """The owner holds it fresh (Age 50 of 3600), but never saw the viewer's max-age or min-fresh."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        asked = {"Cache-Control": directive}
        path = owned_by_peer("/viewer", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, PEER_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        status, headers, body = await edge.get(path, **asked)
        assert (status, body == ORIGIN_BYTES, headers["Cache-Status"]) == (200, True, ORIGIN_MISS), asked
        assert int(headers["Age"]) < 10, asked
        assert (peer.hits[path], origin.hits[path]) == (1, 1), asked


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_owners_fresh_copy_is_the_copy_with_its_age(origin: Origin, tmp_path: Path, fast_path: bool) -> None:
    """The ordinary case, pinned: fresh here and for a viewer asking nothing of its own, the owner's answer is the
    copy, its Age carried, and the origin is not asked."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        path = owned_by_peer("/fresh", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, PEER_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        before = copy_fills()
        for field in (COPY_MISS, "edgecache; hit"):
            status, headers, body = await edge.get(path, **{"Cache-Control": "max-age=100"})
            assert (status, body == PEER_BYTES, headers["Cache-Status"]) == (200, True, field)
            assert 50 <= int(headers["Age"]) < 60
        assert (peer.hits[path], origin.hits[path]) == (1, 0)
        assert copy_fills() == counted(before, hit=1)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_owners_answer_a_shared_cache_may_not_store_is_served_once_and_never_kept(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """Pinned: a private or no-store answer is what the owner passed on from the origin for this fill (a node never
    holds one): its viewer gets it, as a forward's would, and it is never a copy: the next request asks again."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        members = edge.node.cluster.ring.members  # type: ignore[union-attr]
        for kind in ("private", "no-store"):
            path = owned_by_peer(f"/{kind}", members)
            origin.put(path, ORIGIN_BYTES)
            peer.put(path, PEER_BYTES, headers={**UNFIT[kind], **FRAMED})
            for n in (1, 2):
                status, _, body = await edge.get(path)
                assert (status, body == PEER_BYTES) == (200, True), kind
                assert (peer.hits[path], origin.hits[path]) == (n, 0), kind
            assert edge.node.store.peek_meta(f"videos|video.test|{path}") is None, kind


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_no_cache_viewer_of_a_hot_object_is_forwarded_with_its_no_cache(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """Pinned: a request asking for the origin's validation never counts towards heat nor reads the copy
    (popularity.spreadable): it goes to the owner, its no-cache with it, as a child cache's goes to its parent."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        path = owned_by_peer("/nocache", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, PEER_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        assert (await edge.get(path))[2] == PEER_BYTES  # hot: the copy
        for asked in ({"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0"}, {"Pragma": "no-cache"}):
            status, headers, body = await edge.get(path, **asked)
            assert (status, body == PEER_BYTES) == (200, True), asked
            assert headers["Cache-Status"] == "edgecache; hit, " + 'edgecache; fwd=miss; detail="peer"', asked
            name, value = next(iter(asked.items()))
            assert peer.seen[-1].headers[name] == value, asked
        assert (peer.hits[path], origin.hits[path]) == (4, 0)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_owners_304_for_a_copy_older_than_the_viewer_allows_is_not_taken_and_the_origin_is_asked(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """A copy the viewer's max-age makes stale is revalidated with the owner, which answers 304 from its cache (Age
    50): not a validation by the origin, which is asked instead (a 304 too, the same version). The copy then ages
    from the origin's 304: the next request of max-age=10 is a hit."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = only_signed_hops
        hot_at_once(edge)
        path = owned_by_peer("/revalidated", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, PEER_BYTES, headers={"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED})
        status, headers, body = await edge.get(path)
        assert (status, body == PEER_BYTES, headers["Cache-Status"]) == (200, True, COPY_MISS)
        status, headers, body = await edge.get(path, **{"Cache-Control": "max-age=10"})
        assert (status, body == PEER_BYTES) == (200, True)  # "v1" both: the origin's 304 keeps the copy's bytes
        assert headers["Cache-Status"] == "edgecache; fwd=request; fwd-status=304"
        assert int(headers["Age"]) < 10  # confirmed by the origin: aged from its 304 (no Age), not the owner's 50
        assert (peer.hits[path], origin.hits[path]) == (2, 1)
        status, headers, body = await edge.get(path, **{"Cache-Control": "max-age=10"})  # fresh for it now
        assert (status, body == PEER_BYTES, headers["Cache-Status"]) == (200, True, "edgecache; hit")
        assert (peer.hits[path], origin.hits[path]) == (2, 1)
        assert [s.headers.get("If-None-Match") for s in origin.seen if s.path == path] == ['"v1"']


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_each_variant_of_a_copy_is_the_owners_answer_for_that_variants_fields(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """Pinned: the owner answers the fields the copy's fill sends (the entry key's), from the variant they select.
    The first fill of a copy knows no Vary and sends none: its answer names Accept-Language, so the viewer's variant
    is filled again with its own value (as for an origin), and each viewer gets its own language's bytes, each
    variant's copy filled from the owner once (the fast path, finding the first answer another variant's, forwards
    that first request to the owner)."""
    by_language = {"fr": b"f" * 70_000, "en": b"e" * 70_000, None: b"d" * 70_000}

    def varied(request: web.BaseRequest, obj: Obj | None) -> web.Response | Obj | None:
        refused = only_signed_hops(request, obj)
        if refused is not None or obj is None:
            return refused
        fields = {**obj.headers, "Vary": "Accept-Language"}
        language = request.headers.get("Accept-Language")
        return Obj(by_language[language], etag=f'"{language}"', headers=fields)

    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        peer.on_request = varied
        hot_at_once(edge)
        path = owned_by_peer("/varied", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        peer.put(path, b"", headers={"Cache-Control": "public, max-age=3600", "Age": "5", **FRAMED})
        for n, language in enumerate(("fr", "en", None) * 3):
            asked = {"Accept-Language": language} if language else {}
            status, headers, body = await edge.get(path, **asked)
            assert (status, body == by_language[language], headers["Vary"]) == (200, True, "Accept-Language"), n
            if n >= 6:  # each variant of the copy held by now
                assert headers["Cache-Status"] == "edgecache; hit", n
        fills = [s.headers.get("Accept-Language") for s in peer.seen if ";id=fill;" in s.headers.get(hop.FIELD, "")]
        assert sorted(fills, key=str) == sorted(by_language, key=str)  # each variant's copy filled once
        assert origin.hits[path] == 0
