"""A node that has applied a purge never relays the owner's copy of an object that purge covers while the owner
has not applied it: it answers the object itself, from the origin, until the owner's purge log shows the purge.

A purge reaches the nodes one at a time: an owner that was down, cut off or slow to hear it still holds the bytes it
removed, and a request forwarded to it would be answered from them, through a node that answered the purge 200.
Real in-process clusters with their admin APIs (tests/e2e/test_purge_catchup): the owner's relay to the forwarding
node's admin API is cut, so it cannot catch up from it; the purge reaches the forwarding node as a third node's
pass-on would. Requests for objects the purge does not cover go on being forwarded.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.test_purge_catchup import NEW, OLD, WAIT, Cluster, change, cluster, owner
from tests.e2e.test_purge_peers import owners, told
from tests.origin import Origin
from tests.samples import sample_value

PEER = 'edgecache; fwd=miss; detail="peer"'  # the forwarding node's entry in a forwarded answer's Cache-Status


def sent(origin: Origin, path: str) -> int:
    """The origin's answers of `path` that could carry its body: those to requests that were not revalidations."""
    return sum(1 for r in origin.seen if r.path == path and "If-None-Match" not in r.headers)


def behind(peer: str, kind: str) -> float:
    return sample_value("edgecache_peer_purge_behind_total", {"peer": peer, "kind": kind}) or 0.0


def owned_by(c: Cluster, x: int, prefix: str) -> str:
    """A path under `prefix` that node x owns."""
    return next(p for n in range(100) if owner(c, p := f"{prefix}{n}") == x)


async def forwarded(c: Cluster, n: int, path: str, body: bytes) -> None:
    status, headers, got = await c.edge(n).get(path)
    assert (status, got) == (200, body)
    assert headers["Cache-Status"].endswith(PEER), headers["Cache-Status"]


async def answered_here(c: Cluster, n: int, path: str, cache_status: str) -> None:
    status, headers, got = await c.edge(n).get(path)
    assert (status, got, headers["Cache-Status"]) == (200, NEW, cache_status)


async def caught_up_with(c: Cluster, n: int, x: int) -> None:
    """Until node n's last answer from x's purge log shows every purge n has applied."""
    sync = c.edge(n).node.purge_sync
    assert sync is not None
    async with sync.rounds:
        await sync.rounds.wait_for(lambda: sync.has_ours(f"node{x}"))


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_purged_url_is_answered_from_the_origin_not_relayed_from_an_owner_that_lacks_the_purge(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    async with cluster(origin, tmp_path) as c:
        x = 0
        n = 1  # forwards x's objects; a node without the fast path forwards them with the full handler
        if not fast_path:
            await c.stop(n)
            c.configs[n] = replace(c.configs[n], fast_path=False)
            await c.start(n)
            await c.settled()
        path, other = owned_by(c, x, "/fwd/a"), owned_by(c, x, "/fwd/b")
        for p in (path, other):
            origin.put(p, OLD, etag='"v1"')
            await forwarded(c, n, p, OLD)  # x fills and holds it
        await c.relays[x, n].cut()  # x cannot read n's purge log: it lacks n's purges until healed
        change(origin, path)
        counted = behind("node0", "url")
        await told(c, n, {"url": f"http://video.test{path}"})
        await answered_here(c, n, path, "edgecache; fwd=uri-miss; stored")  # never x's pre-purge copy
        await answered_here(c, n, path, "edgecache; hit")
        assert origin.hits[path] == 2
        assert behind("node0", "url") == counted + 1  # the object, once
        await forwarded(c, n, other, OLD)  # not covered by the purge: still x's, from its cache
        assert sent(origin, other) == 1  # (x may have revalidated it: a peer seen down and up makes it doubt)
        await c.relays[x, n].heal()  # x catches up from n, then n hears from x that it has
        await c.settled()
        async with asyncio.timeout(WAIT):
            await caught_up_with(c, n, x)
            await caught_up_with(c, x, n)  # and x asks n's cache on a miss (core.lookaside)
        # x's again: its copy was purged, and its miss asks its next owner's cache first (core.lookaside): n's copy
        # from after the purge when n is that owner, else the origin.
        status, headers, got = await c.edge(n).get(path)
        seeded = owners(c, path)[1] == n
        filled = (
            'edgecache; fwd=uri-miss; stored; detail="peer-lookaside"' if seeded else "edgecache; fwd=uri-miss; stored"
        )
        assert (status, got, headers["Cache-Status"]) == (200, NEW, f"{filled}, {PEER}")
        assert origin.hits[path] == (2 if seeded else 3)


async def test_a_purged_prefix_keeps_only_the_objects_under_it_from_an_owner_that_lacks_it(
    origin: Origin, tmp_path: Path
) -> None:
    async with cluster(origin, tmp_path) as c:
        x, n = 0, 1
        under, beside = owned_by(c, x, "/dir/"), owned_by(c, x, "/dirt/")  # "/dirt/" is not under "/dir/"
        for p in (under, beside):
            origin.put(p, OLD, etag='"v1"')
            await forwarded(c, n, p, OLD)
            change(origin, p)
        await c.relays[x, n].cut()
        counted = behind("node0", "prefix")
        await told(c, n, {"prefix": "http://video.test/dir/"})
        await answered_here(c, n, under, "edgecache; fwd=uri-miss; stored")
        await forwarded(c, n, beside, OLD)  # x's copy, fresh and purged by nothing
        assert (origin.hits[under], sent(origin, beside)) == (2, 1)
        assert behind("node0", "prefix") == counted + 1
