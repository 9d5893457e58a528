"""A look-aside on a real grown cluster (three nodes, then a fourth that takes its share of the keys), on both paths:
the previous owner answers only an entry it holds fresh, and the new owner's copy ages on from the peer's Age.
A stale answer must not come back fresher by a hop (RFC 9111 4.2.3: Age carries over)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecache.core.ring import Ring
from tests.conftest import Edge
from tests.e2e.test_ring_continuity import four_members, grown_cluster, lookasides, owner
from tests.origin import Origin
from tests.wire import fast_path_outcomes

BODY = b"l" * 150_000  # 3 slices of test_ring_continuity's 64 KiB


def moved(prefix: str) -> str:
    """A path the fourth node owns once it joins."""
    return next(p for p in (f"{prefix}/{i}" for i in range(200)) if owner(p, four_members()) == "node4")


def previous_owner(edges: list[Edge], path: str) -> Edge:
    first = Ring.of(four_members()[:3]).owner(f"videos|video.test|{path}")
    assert first is not None
    return edges[int(first.id[-1]) - 1]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_an_entry_stale_at_the_previous_owner_is_not_taken_from_it(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """The previous owner holds an entry stale but servable to a viewer (stale-while-revalidate): it is not held for a
    look-aside (504), on the fast path as in the full handler, and the new owner fills from the origin. Before, the
    fast path answered the look-aside from it (and revalidated it in the background, a fill the look-aside forbids),
    and the new owner stored the old owner's stale copy as its miss from the peer."""
    path = moved("/swr")
    origin.put(path, BODY, headers={"Cache-Control": "public, max-age=1, stale-while-revalidate=60", "Age": "30"})
    async with grown_cluster(origin, tmp_path, [path], fast_path=fast_path) as edges:
        old = previous_owner(edges, path)
        assert old.node.store.peek_meta(f"videos|video.test|{path}") is not None  # held there, stale since stored
        misses, hits, handed = lookasides("miss"), lookasides("hit"), fast_path_outcomes()["handed_off"]
        status, headers, body = await edges[3].get(path)
        assert (status, body) == (200, BODY)
        assert headers["Cache-Status"] == "edgecache; fwd=uri-miss; stored"
        assert 30 <= int(headers["Age"]) < 40  # the origin's Age
        assert origin.hits[path] == 2  # the origin asked by the new owner, never by the old one for the look-aside
        assert (lookasides("miss") - misses, lookasides("hit") - hits) == (1, 0)
        assert fast_path_outcomes()["handed_off"] == handed


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_every_lookaside_answer_carries_the_peers_age(origin: Origin, tmp_path: Path, fast_path: bool) -> None:
    """A copy aged 50 at the previous owner is never served younger by the new owner: not its first answer (the miss
    it filled from the peer), nor the hits after it."""
    path = moved("/aged50")
    origin.put(path, BODY, headers={"Cache-Control": "public, max-age=3600", "Age": "50"})
    async with grown_cluster(origin, tmp_path, [path], fast_path=fast_path) as edges:
        looked = lookasides("hit")
        for field in ('edgecache; fwd=uri-miss; stored; detail="peer-lookaside"', "edgecache; hit", "edgecache; hit"):
            status, headers, body = await edges[3].get(path)
            assert (status, body, headers["Cache-Status"]) == (200, BODY, field)
            assert 50 <= int(headers["Age"]) < 60
        assert lookasides("hit") == looked + 1
        assert origin.hits[path] == 1
