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
import socket
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.test_purge_catchup import NEW, OLD, WAIT, Cluster, change, cluster, owner
from tests.e2e.test_purge_peers import owners, told
from tests.e2e.test_relay import answers, request
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes

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
    """Answered by node n itself, on its fast path when it has one: never handed to aiohttp (issue 14)."""
    handed_off = fast_path_outcomes()["handed_off"]
    status, headers, got = await c.edge(n).get(path)
    assert (status, got, headers["Cache-Status"]) == (200, NEW, cache_status)
    assert fast_path_outcomes()["handed_off"] == handed_off


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0): a viewer gone, where a FIN would be a half-close and its answer still due."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def asked(origin: Origin, path: str, hits: int) -> None:
    async with origin.arrived:
        await origin.arrived.wait_for(lambda: origin.hits[path] >= hits)


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
        for peer in (n, 2):  # x reads neither purge log (node 2's would have n's purge soon): x lacks it until healed
            await c.relays[x, peer].cut()
        change(origin, path)
        counted = behind("node0", "url")
        await told(c, n, {"url": f"http://video.test{path}"})
        await answered_here(c, n, path, "edgecache; fwd=uri-miss; stored")  # never x's pre-purge copy
        await answered_here(c, n, path, "edgecache; hit")
        assert origin.hits[path] == 2
        assert behind("node0", "url") == counted + 1  # the object, once
        await forwarded(c, n, other, OLD)  # not covered by the purge: still x's, from its cache
        assert sent(origin, other) == 1  # (x may have revalidated it: a peer seen down and up makes it doubt)
        for peer in (n, 2):  # x catches up, then n hears from x that it has
            await c.relays[x, peer].heal()
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
        for peer in (n, 2):  # x reads neither purge log (node 2's would have n's purge soon): x lacks it
            await c.relays[x, peer].cut()
        counted = behind("node0", "prefix")
        await told(c, n, {"prefix": "http://video.test/dir/"})
        await answered_here(c, n, under, "edgecache; fwd=uri-miss; stored")
        await forwarded(c, n, beside, OLD)  # x's copy, fresh and purged by nothing
        assert (origin.hits[under], sent(origin, beside)) == (2, 1)
        assert behind("node0", "prefix") == counted + 1


async def test_a_forward_sent_again_after_a_purge_is_answered_here_not_relayed_from_an_owner_that_lacks_it(
    origin: Origin, tmp_path: Path
) -> None:
    """A forward pipelined behind an answer that failed is sent again (proxy.relay): that attempt is judged as
    the first was, so a purge applied here in between keeps it from the owner that lacks the purge."""
    async with cluster(origin, tmp_path) as c:
        x, n = 0, 1
        slow, path = owned_by(c, x, "/again/slow"), owned_by(c, x, "/again/p")
        origin.put(path, OLD, etag='"v1"')
        await forwarded(c, n, path, OLD)  # x holds it
        origin.put(slow, b"slow " * 100)
        for other in (n, 2):  # x reads neither purge log (node 2's would have n's purge soon): x lacks it
            await c.relays[x, other].cut()
        origin.gate = asyncio.Event()  # x's miss of `slow` waits for its origin: what is behind it waits too
        fast = c.edge(n).fast
        assert fast is not None
        viewers = [await asyncio.open_connection("127.0.0.1", c.edge(n).port) for _ in range(2)]
        for (_, writer), p in zip(viewers, (slow, path), strict=True):
            writer.write(request(p, close=True))  # read in one loop turn: one batch to x, `slow` at the front
        async with asyncio.timeout(WAIT):
            await asked(origin, slow, 1)
        relays = {conn.relay.fwd.key.path: conn.relay for conn in fast.connections if conn.relay is not None}
        assert relays[path].peer is relays[slow].peer is not None  # `path` pipelined behind `slow`
        change(origin, path)
        await told(c, n, {"url": f"http://video.test{path}"})  # applied here; x lacks it
        reset(viewers[0][1])  # `slow`'s viewer leaves: its answer is cut, `path` is sent again at once
        reader = viewers[1][0]
        read = asyncio.create_task(reader.read(-1))
        filling = asyncio.create_task(asked(origin, path, 2))  # n asks the origin for it (its own fill) ...
        async with asyncio.timeout(WAIT):
            await asyncio.wait([read, filling], return_when=asyncio.FIRST_COMPLETED)
        assert not read.done(), answers(read.result(), ["GET"])[0][2][:20]  # ... never relays x's copy (OLD)
        origin.gate.set()
        async with asyncio.timeout(WAIT):
            status, fields, body = answers(await read, ["GET"])[0]
        viewers[1][1].close()
        assert (status, body, fields["cache-status"]) == (200, NEW, "edgecache; fwd=uri-miss; stored")
        assert origin.hits[path] == 2
        await answered_here(c, n, path, "edgecache; hit")


def purge_log_read(peer: str) -> float | None:
    return sample_value("edgecache_peer_purge_log_reachable", {"peer": peer})


async def test_a_peer_whose_purge_log_cannot_be_read_shows_in_a_gauge(origin: Origin, tmp_path: Path) -> None:
    """edgecache_peer_purge_log_reachable{peer}: 0 while the peer's purge log cannot be read (its admin port cut
    off), when this node keeps from it what any purge covers (all of it once its log is pruned); 1 once read again.
    The nodes share this process's registry: both readers of x are cut, so both say 0."""
    async with cluster(origin, tmp_path) as c:
        x, n = 0, 1
        assert purge_log_read("node0") == 1.0
        sync = c.edge(n).node.purge_sync
        assert sync is not None
        for reader in (n, 2):
            await c.relays[reader, x].cut()
        async with asyncio.timeout(WAIT), sync.rounds:
            await sync.rounds.wait_for(lambda: purge_log_read("node0") == 0.0)
        for _ in range(2):  # and it stays 0, round after round
            async with asyncio.timeout(WAIT), sync.rounds:
                await sync.rounds.wait()
            assert purge_log_read("node0") == 0.0
        for reader in (n, 2):
            await c.relays[reader, x].heal()
        await c.settled()
        async with asyncio.timeout(WAIT), sync.rounds:
            await sync.rounds.wait_for(lambda: purge_log_read("node0") == 1.0)
