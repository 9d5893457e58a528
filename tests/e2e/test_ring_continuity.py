"""Ring continuity on a real in-process cluster: a node added to a warm cluster takes the objects it now owns
from their previous owner's cache (a signed look-aside hop), not from the origin; never another version's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from edgecache import metrics
from edgecache.config import ClusterSettings, Config, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, all_up, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin
from tests.wire import fast_path_outcomes

SLICE = 64 * 1024
PATHS = [f"/warm/{i}.bin" for i in range(40)]


def four_members() -> tuple[Member, ...]:
    return tuple(Member(f"node{i + 1}", f"127.0.0.1:{free_port()}") for i in range(4))


def config(
    origin: Origin, tmp_path: Path, members: tuple[Member, ...], me: Member, fast_path: bool = True, timeout: float = 10
) -> Config:
    """`timeout` (cluster.timeout) bounds a look-aside's wait for its peer: the nodes of a test share one process,
    and on a loaded machine it may not run for over half a second (a pause), so a look-aside under a short one ends
    as a timeout, counted an error, not the miss or other version a test asserts (a run failed so)."""
    cfg = make_config(tmp_path / me.id, [origin.url], slice_bytes=SLICE)
    settings = ClusterSettings(
        self_id=me.id, key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=timeout, rise=2, fall=2
    )
    port = int(me.address.rpartition(":")[2])
    log = tmp_path / f"{me.id}.log"
    return replace(cfg, listen=(Listen("127.0.0.1", port),), cluster=settings, access_log=log, fast_path=fast_path)


def logged(tmp_path: Path, node: str, path: str) -> list[tuple[object, object, object]]:
    """(status, cache, upstream) of each line of `node`'s access log for `path`."""
    lines = [json.loads(line) for line in (tmp_path / f"{node}.log").read_bytes().splitlines()]
    return [(r["status"], r["cache"], r["upstream"]) for r in lines if r["path"] == path]


@contextlib.asynccontextmanager
async def grown_cluster(
    origin: Origin, tmp_path: Path, warm: list[str], ranged: str | None = None, fast_path: bool = True
) -> AsyncIterator[list[Edge]]:
    """Three nodes, warmed with `warm` (GETs, of the range `ranged` if given, each through another node), then a
    fourth node that all four now count as a member (the three are given it as a DNS answer or reload would).
    `fast_path` False: every node answers with the full handler alone."""
    members = four_members()
    three = members[:3]
    async with contextlib.AsyncExitStack() as stack:
        configs = [config(origin, tmp_path, three, m, fast_path) for m in three]
        edges = [await stack.enter_async_context(start_edge(c)) for c in configs]
        await all_up(edges, [m.id for m in three])
        for i, p in enumerate(warm):
            status, _, body = await edges[i % 3].get(p, **({"Range": ranged} if ranged else {}))
            data = origin.objects[p].data
            first, last = (int(n) for n in ranged[6:].split("-")) if ranged else (0, len(data) - 1)
            assert (status, body) == (206 if ranged else 200, data[first : last + 1]), p
        assert all(origin.hits[p] == 1 for p in warm)
        fourth = config(origin, tmp_path, members, members[3], fast_path)
        edges.append(await stack.enter_async_context(start_edge(fourth)))
        for e in edges[:3]:
            assert e.node.cluster is not None
            e.node.cluster.set_members(members)
        await all_up(edges, [m.id for m in members])
        yield edges


def origin_bytes() -> float:
    return metrics.ORIGIN_BYTES.labels("videos").wrapped._value.get()  # type: ignore[attr-defined, no-any-return]


def lookasides(outcome: str) -> float:
    peers = ("node1", "node2", "node3", "node4")
    return sum(metrics.PEER_LOOKASIDE.labels(p, outcome).wrapped._value.get() for p in peers)  # type: ignore[attr-defined]


def owner(path: str, members: tuple[Member, ...]) -> str:
    """Ownership is by id alone (core.ring scores ids): the addresses of `members` play no part."""
    member = Ring.of(members).owner(f"videos|video.test|{path}")
    assert member is not None
    return member.id


async def test_a_fourth_node_takes_its_share_from_the_previous_owners(origin: Origin, tmp_path: Path) -> None:
    for i, p in enumerate(PATHS):
        origin.put(p, bytes([i]) * (100_000 + 9_000 * i))  # 2 to 7 slices each
    warm_bytes = sum(len(origin.objects[p].data) for p in PATHS)
    async with grown_cluster(origin, tmp_path, PATHS) as edges:
        members = edges[3].node.cluster.ring.members  # type: ignore[union-attr]
        moved = [p for p in PATHS if owner(p, members) == "node4"]
        assert 5 <= len(moved) <= 20  # about a quarter: what the origin served again before ring continuity
        before, hits_before, handed = origin_bytes(), lookasides("hit"), fast_path_outcomes()["handed_off"]
        for round_ in range(2):  # the warm set replayed through every node, whole and in ranges
            for i, p in enumerate(PATHS):
                for n, e in enumerate(edges):
                    if (i + n + round_) % 2:
                        status, _, body = await e.get(p)
                        assert (status, body) == (200, origin.objects[p].data), (p, n)
                    else:
                        status, _, body = await e.get(p, Range=f"bytes={SLICE + 10}-{2 * SLICE + 20}")
                        assert (status, body) == (206, origin.objects[p].data[SLICE + 10 : 2 * SLICE + 21]), (p, n)
        moved_bytes = sum(len(origin.objects[p].data) for p in moved)
        assert origin_bytes() - before <= 0.05 * warm_bytes, (origin_bytes() - before, moved_bytes, warm_bytes)
        assert lookasides("hit") - hits_before >= len(moved)
        # The new owner's misses filled from the previous owners' caches, and their hops, stay on the fast path.
        assert fast_path_outcomes()["handed_off"] == handed
        for p in moved:  # the new owner holds them now, each fetched from the origin once in all
            assert edges[3].node.store.peek_meta(f"videos|video.test|{p}") is not None, p
            assert origin.hits[p] == 1, p
    # A look-aside that found nothing is no viewer's request: no node logged a 504.
    for node in ("node1", "node2", "node3", "node4"):
        lines = (tmp_path / f"{node}.log").read_bytes().splitlines()
        assert {json.loads(line)["status"] for line in lines} == {200, 206}, node


async def test_a_lookaside_fill_says_so_and_ages_on_from_the_peer(origin: Origin, tmp_path: Path) -> None:
    path = next(p for p in (f"/aged/{i}" for i in range(200)) if owner(p, four_members()) == "node4")
    origin.put(path, b"a" * 150_000, headers={"Cache-Control": "public, max-age=3600", "Age": "1000"})
    async with grown_cluster(origin, tmp_path, [path]) as edges:
        moved, handed = (
            metrics.MISSES.labels("videos", "ring-moved").wrapped._value.get(),
            fast_path_outcomes()["handed_off"],
        )
        status, headers, body = await edges[3].get(path)
        assert (status, body) == (200, origin.objects[path].data)
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; stored; detail="peer-lookaside"'
        assert metrics.MISSES.labels("videos", "ring-moved").wrapped._value.get() - moved == 1  # its miss's cause
        status, headers, body = await edges[3].get(path)
        assert (status, body) == (200, origin.objects[path].data)
        assert headers["Cache-Status"] == "edgecache; hit"
        assert headers["Via"] == "1.1 edgecache"  # the peer's Via and Cache-Status were not stored
        assert 1000 <= int(headers["Age"]) < 1100
        assert origin.hits[path] == 1
        previous = edges[int(Ring.of(four_members()[:3]).owners(f"videos|video.test|{path}")[0].id[-1]) - 1]
        _, theirs, _ = await previous.get(path)  # forwarded to the new owner, which adds its own Via and status
        assert theirs["Cache-Status"] == 'edgecache; hit, edgecache; fwd=miss; detail="peer"'
        same = lambda fields: {k: v for k, v in fields.items() if k not in ("Age", "Via", "Cache-Status")}  # noqa: E731
        assert same(theirs) == same(headers)
        assert fast_path_outcomes()["handed_off"] == handed  # the look-aside miss and its hops: fast path's
    assert logged(tmp_path, "node4", path)[:2] == [(200, "miss", "peer"), (200, "hit", "cache")]


async def test_a_changed_object_is_never_mixed_with_the_peers_old_slices(origin: Origin, tmp_path: Path) -> None:
    path = next(p for p in (f"/changed/{i}" for i in range(200)) if owner(p, four_members()) == "node4")
    old, new = bytes(range(256)) * 1300, bytes(reversed(range(256))) * 1300  # 332,800 bytes: 6 slices
    origin.put(path, old)
    async with grown_cluster(origin, tmp_path, [path], ranged=f"bytes={2 * SLICE}-{4 * SLICE - 1}") as edges:
        # The previous owner holds the old version's slices 2 and 3 only.
        origin.put(path, new, etag='"v2"')
        misses, refused, handed = lookasides("miss"), lookasides("other-version"), fast_path_outcomes()["handed_off"]
        # Slice 0 is not on the peer: it says so, and the new owner takes the new version from the origin.
        status, _, body = await edges[3].get(path, Range="bytes=0-99")
        assert (status, body) == (206, new[:100])
        assert lookasides("miss") == misses + 1
        # Slice 2 is on the peer, of the old version: never stored beside the new one's slices.
        status, _, body = await edges[3].get(path, Range=f"bytes={2 * SLICE}-{2 * SLICE + 99}")
        assert (status, body) == (206, new[2 * SLICE : 2 * SLICE + 100])
        assert lookasides("other-version") == refused + 1
        status, _, body = await edges[3].get(path)
        assert (status, body) == (200, new)
        # The look-asides the peer could not answer (a slice it does not hold) were refused on its fast path.
        assert fast_path_outcomes()["handed_off"] == handed


async def test_a_peer_that_does_not_answer_costs_a_bounded_wait_then_the_origin(origin: Origin, tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing, answers nothing: a peer that hangs

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    members = (Member("node1", f"127.0.0.1:{port}"), Member("node4", f"127.0.0.1:{free_port()}"))
    path = next(p for p in (f"/silent/{i}" for i in range(200)) if owner(p, members) == "node4")
    origin.put(path, b"s" * 100_000)
    errors = metrics.PEER_ERRORS.labels("node1", "timeout").wrapped._value.get()  # type: ignore[attr-defined]
    try:
        # A short timeout: the wait this test bounds.
        async with start_edge(config(origin, tmp_path, members, members[1], timeout=0.5)) as edge:
            await all_up([edge], ["node1", "node4"])
            status, headers, body = await edge.get(path)
            assert (status, body) == (200, origin.objects[path].data)
            assert headers["Cache-Status"] == "edgecache; fwd=uri-miss; stored"
            assert origin.hits[path] == 1
            assert lookasides("error") >= 1
            assert metrics.PEER_ERRORS.labels("node1", "timeout").wrapped._value.get() == errors + 1  # type: ignore[attr-defined]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
