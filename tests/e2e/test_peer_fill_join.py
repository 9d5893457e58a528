"""A request that asks something of a stored answer's age itself (no-cache, max-age, min-fresh) and comes while a
fill is out: collapsed onto it, it gets that fill's answer. A fill a peer's cache answers (a look-aside, a hot copy's
fill from its owner) is judged for the request that started it alone (core.lookaside: the peer is asked with the
key's fields), so such a request does not join it: it fills for itself and is judged on its own, the origin asked
when the peer's copy is not for it. A fill that asks the origin it joins, as any request does. Real node, stand-in
peer held at its first answer, both paths; exact bytes and hit counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core import hop
from tests.conftest import CLUSTER_KEY, Edge
from tests.e2e.test_lookaside_receive import FRAMED, ORIGIN_BYTES, node_and_peer, owned
from tests.e2e.test_spread_receive import hot_at_once, owned_by_peer
from tests.origin import Obj, Origin

HELD_FRESH = {"Cache-Control": "public, max-age=3600", "Age": "50", **FRAMED}  # fresh here, 50 s old


def held_first(lookaside: bool, release: asyncio.Event) -> Callable[..., object]:
    """The stand-in peer: answers signed hops of the kind asked (a look-aside, or a copy's fill), the first one
    only once `release` is set."""
    answered = 0

    async def on_request(request: web.BaseRequest, obj: Obj | None) -> web.Response | None:
        nonlocal answered
        primary = f"videos|video.test|{request.raw_path}"
        got = hop.verify(CLUSTER_KEY, request.headers.getall(hop.FIELD, []), "GET", primary, time.time())
        if not isinstance(got, hop.Hop) or got.lookaside is not lookaside or obj is None:
            return web.Response(status=504, text="not held\n")
        answered += 1
        if answered == 1:
            await release.wait()
        return None

    return on_request


async def until(holds: Callable[[], bool]) -> None:
    """Polled: what it waits for happens inside the node, with no event to wait on."""
    async with asyncio.timeout(10):
        while not holds():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def expecting(edge: Edge, path: str) -> int:
    """Requests that joined (or started) the fills of `path` and are still to read them."""
    return sum(len(f.expecting) for f in edge.node.engine.fills.of(f"videos|video.test|{path}"))


Answer = tuple[int, int, str, bytes]  # status, Age, Cache-Status, body


async def joined_while_held(
    edge: Edge, holder: Origin, path: str, asked: dict[str, str], release: asyncio.Event
) -> tuple[Answer, Answer]:
    """A plain request, held at `holder`; then one with `asked`, once it has a fill to read; then the release."""
    first = asyncio.create_task(edge.get(path))
    await until(lambda: holder.hits[path] == 1)
    second = asyncio.create_task(edge.get(path, **asked))
    await until(lambda: expecting(edge, path) >= 2 or second.done())
    release.set()
    (s1, h1, b1), (s2, h2, b2) = await asyncio.gather(first, second)
    return (s1, int(h1["Age"]), h1["Cache-Status"], b1), (s2, int(h2["Age"]), h2["Cache-Status"], b2)


def from_peer(answer: Answer) -> bool:
    """The peer's copy (Age 50 on), not the origin's: the two hold the same bytes of "v1", as real ones do (a
    request that fills its first slices itself reads the rest from the fill it did not join, of the same version)."""
    return answer[1] >= 50 and answer[2].endswith(('detail="peer-lookaside"', 'detail="peer"'))


@pytest.mark.parametrize("directive", ["no-cache", "max-age=10"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_request_with_its_own_demands_does_not_join_a_look_aside_and_gets_the_origins_answer(
    origin: Origin, tmp_path: Path, fast_path: bool, directive: str
) -> None:
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        release = asyncio.Event()
        peer.on_request = held_first(True, release)
        path = owned("/joined", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, ORIGIN_BYTES, headers=HELD_FRESH)
        plain, demanding = await joined_while_held(edge, peer, path, {"Cache-Control": directive}, release)
        assert (plain[0], plain[3] == ORIGIN_BYTES, from_peer(plain)) == (200, True, True)  # fresh for it
        assert (demanding[0], demanding[3] == ORIGIN_BYTES, from_peer(demanding)) == (200, True, False)
        assert demanding[1] < 10
        assert origin.hits[path] == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_request_with_its_own_max_age_does_not_join_a_copys_fill_and_gets_the_origins_answer(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """A hot copy's fill, answered by the owner's cache: a max-age=10 request counts towards heat and reads the
    copy; the owner's answer (Age 50) is not for it. (A no-cache one is forwarded to the owner: never a copy's.)"""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        release = asyncio.Event()
        peer.on_request = held_first(False, release)
        hot_at_once(edge)
        path = owned_by_peer("/joined", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)
        peer.put(path, ORIGIN_BYTES, headers=HELD_FRESH)
        plain, demanding = await joined_while_held(edge, peer, path, {"Cache-Control": "max-age=10"}, release)
        assert (plain[0], plain[3] == ORIGIN_BYTES, from_peer(plain)) == (200, True, True)
        assert (demanding[0], demanding[3] == ORIGIN_BYTES, from_peer(demanding)) == (200, True, False)
        assert demanding[1] < 10
        assert origin.hits[path] == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_no_cache_request_joins_a_fill_that_asks_the_origin(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """Pinned: the peer does not hold it, so the fill asks the origin (held there); a no-cache request that comes
    meanwhile is collapsed onto that origin request: one origin hit, the origin's bytes to both."""
    async with node_and_peer(origin, tmp_path, fast_path) as (edge, peer):
        release = asyncio.Event()
        path = owned("/origin", edge.node.cluster.ring.members)  # type: ignore[union-attr]
        origin.put(path, ORIGIN_BYTES)  # the stand-in peer holds nothing: 504 to its look-aside

        async def held(request: web.BaseRequest, obj: Obj | None) -> None:
            if origin.hits[path] == 1:
                await release.wait()

        origin.on_request = held
        plain, demanding = await joined_while_held(edge, origin, path, {"Cache-Control": "no-cache"}, release)
        assert [(a[0], a[3] == ORIGIN_BYTES, from_peer(a)) for a in (plain, demanding)] == [(200, True, False)] * 2
        assert (peer.hits[path], origin.hits[path]) == (1, 1)
