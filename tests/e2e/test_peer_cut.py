"""A hot copy's fill from its owner whose answer breaks off mid-body (the owner cut it, as an owner does when its own
fill meets a new version at the origin, or it was killed): a request that joined that fill for a later part, with no
byte of its answer sent yet, tries again (core.churn counts the try), as nginx's proxy_next_upstream retries an
upstream failure while nothing has gone to the client; the request that was already being answered is cut, never
given other bytes. Found by loadtest.fuzz_e2e --modes cluster (seed 50: "peer node3 body broken" four times at once,
four readers of one fill, each a 502 "peer failed (reset)").

A real node (node1) and a stand-in owner (node2: a real aiohttp server on the member's address answering signed
hops), which answers the first copy's fill with its head and a slice and a bit, holds, then drops the connection,
and every later fill whole and exact. Both paths; exact bytes, status, Content-Range, hit counts, the peer's error
counted once, and no request handed to aiohttp's server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import Edge
from tests.e2e.test_lookaside_receive import FRAMED, SLICE, node_and_peer
from tests.e2e.test_peer_fill_join import until
from tests.e2e.test_spread_receive import hot_at_once, only_signed_hops, owned_by_peer
from tests.origin import Obj, Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes

DATA = os.urandom(150_000)  # 3 slices of 64 KiB, the last short
FRESH = {"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED}  # a real owner's hit, fresh here
SENT = SLICE + 16_384  # what the owner sends of its first answer before it drops the connection


def resets() -> float:
    return sample_value("edgecache_peer_errors_total", {"peer": "node2", "kind": "reset"}) or 0.0


def fills_read(edge: Edge, path: str) -> int:
    """Reads under way of the fills of `path` (Fill.readers)."""
    return sum(f.readers for f in edge.node.engine.fills.of(f"videos|video.test|{path}"))


def cutting(peer: Origin, path: str, release: asyncio.Event, every: bool) -> object:
    """The stand-in owner's hook: its first answer to a copy's fill is its head and SENT bytes, then, once `release`
    is set, the connection dropped mid-body (what a killed owner, or one that cut its answer, leaves); every later
    one is whole, or (`every`) cut the same way at once, after its head and its first 4 KiB."""

    async def cut(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if (refused := only_signed_hops(request, obj)) is not None or (peer.hits[path] > 1 and not every):
            return refused
        fields = {"Content-Type": "application/octet-stream", "ETag": '"v1"', **FRESH}
        first, last = 0, len(DATA) - 1
        if (asked := request.headers.get("Range")) is not None:
            lo, hi = asked.removeprefix("bytes=").split("-")
            first, last = int(lo), min(int(hi), last)
            fields["Content-Range"] = f"bytes {first}-{last}/{len(DATA)}"
        resp = web.StreamResponse(status=206 if asked else 200, headers=fields)
        resp.content_length = last - first + 1
        await resp.prepare(request)
        await resp.write(DATA[first : first + (SENT if peer.hits[path] == 1 else 4096)])
        if peer.hits[path] == 1:
            await release.wait()
        assert request.transport is not None
        request.transport.abort()
        return resp

    return cut


def cut_by_owner(edge: Edge, peer: Origin, origin: Origin, name: str, every: bool) -> tuple[str, asyncio.Event]:
    """An object the peer owns, stored by both origins, which the peer cuts (its first answer once `release` is
    set; with `every`, every answer)."""
    hot_at_once(edge)
    path = owned_by_peer(name, edge.node.cluster.ring.members)  # type: ignore[union-attr]
    origin.put(path, DATA)
    peer.put(path, DATA, headers=FRESH)
    release = asyncio.Event()
    peer.on_request = cutting(peer, path, release, every=every)
    return path, release


async def cut_under(edge: Edge, path: str, release: asyncio.Event) -> tuple[int, CIMultiDict[str], bytes]:
    """A first viewer's answer begins (the head, then the owner's first slice) and is cut; a second one, which
    joined the fill for its last slice (nothing of it come: no byte of its answer sent), is answered as it ends."""
    async with aiohttp.ClientSession() as session:
        first = await session.get(edge.url + path, headers={"Host": "video.test"})
        assert first.status == 200
        second = asyncio.create_task(edge.get(path, Range="bytes=140000-140099"))
        await until(lambda: fills_read(edge, path) >= 2 or second.done())
        release.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await first.read()
        first.release()
        return await second


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_reader_of_a_later_part_of_a_copys_fill_the_owner_cut_tries_again(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        path, release = cut_by_owner(edge, peer, origin, "/cut", every=False)
        resets_before, handed_off = resets(), fast_path_outcomes()["handed_off"]
        status, headers, body = await cut_under(edge, path, release)
        assert (status, headers.get("Content-Range"), body) == (206, "bytes 140000-140099/150000", DATA[140000:140100])
        assert (peer.hits[path], origin.hits[path]) == (2, 0)
        # Asked afresh: the fast path decides the head again, and, let in already (not asked of the popularity gate
        # again), forwards it to the owner; the full handler's next try fills the copy's slice it lacks.
        again = "bytes=140000-140099" if fast_path else f"bytes={2 * SLICE}-{3 * SLICE - 1}"
        assert peer.range_hits(path) == [None, again]
        assert resets() == resets_before + 1  # the owner's failure, counted once (never as the origin's)
        assert fast_path_outcomes()["handed_off"] == handed_off


async def test_an_owner_that_keeps_cutting_its_answers_ends_in_one_origin_request(
    origin: Origin, tmp_path: Path
) -> None:
    """Bounded: the second cut is the second try that met what core.churn counts as a change, and the request is
    relayed from one origin request, exact, never asked of that peer a third time. The full handler's: the fast
    path's second try is a forward to the owner, whose answer, relayed as it comes, is cut as any forward's is."""
    async with node_and_peer(origin, tmp_path, False) as (edge, peer):
        path, release = cut_by_owner(edge, peer, origin, "/cuts", every=True)
        resets_before = resets()
        status, headers, body = await cut_under(edge, path, release)
        assert (status, headers.get("Content-Range"), body) == (206, "bytes 140000-140099/150000", DATA[140000:140100])
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="changing"'
        assert peer.range_hits(path) == [None, f"bytes={2 * SLICE}-{3 * SLICE - 1}"]
        assert origin.range_hits(path) == ["bytes=140000-140099"]
        assert resets() == resets_before + 2
