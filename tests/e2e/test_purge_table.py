"""The purge table through the real admin API: bounded on disk and in memory, and a purged object stays a miss
across compactions and a restart (origin hit counts exact)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edgecache.config import Site
from edgecache.core.purge import PurgeTable
from tests.e2e.adminkit import VIDEOS, AdminNode, admin_node, node_config
from tests.origin import Origin

SITE, HOST = "videos", "video.test"


async def purge(node: AdminNode, body: dict[str, object]) -> None:
    status, answer = await node.call("POST", "/purge", json=body)
    assert status == 200, answer


def log_lines(node: AdminNode) -> int:
    return node.edge.node.store.purge_log.path.read_bytes().count(b"\n")


async def test_the_table_and_its_file_stay_bounded(origin: Origin, tmp_path: Path) -> None:
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        store = node.edge.node.store
        for i in range(200):
            await purge(node, {"prefix": "http://video.test/same/", "soft": i % 2 == 1})
            assert log_lines(node) <= 1 + 1 + 64
        assert list(store.purges.marks) == [(SITE, HOST, "/same/")]
        for i in range(200):
            await purge(node, {"prefix": f"http://video.test/d{i}/"})
        assert len(store.purges.marks) == 201
        assert log_lines(node) <= 1 + 201 + 64
        await purge(node, {"site": SITE})
        assert list(store.purges.marks) == [(SITE, "", "")]
        assert log_lines(node) == 1  # compacted: one snapshot line
        assert store.purge_log.path.stat().st_size < 200
    assert sum(origin.hits.values()) == 0


async def test_purged_objects_stay_misses_across_compaction_and_restart(origin: Origin, tmp_path: Path) -> None:
    paths = ["/gone/x", "/gone/y", "/keep/x", "/a/b/old", "/a/b/mid"]
    for p in paths:
        origin.put(p, p.encode() * 100)
    cfg = node_config(origin, tmp_path / "c")

    async def get(node: AdminNode, path: str) -> None:
        status, _, body = await node.edge.get(path)
        assert (status, body) == (200, path.encode() * 100)

    async with admin_node(cfg) as node:
        for p in ["/gone/x", "/gone/y", "/keep/x", "/a/b/old"]:
            await get(node, p)
        await purge(node, {"prefix": "http://video.test/gone/"})
        await purge(node, {"prefix": "http://video.test/a/b/"})
        await get(node, "/a/b/mid")  # stored between the two purges
        await purge(node, {"prefix": "http://video.test/a/"})  # takes the place of /a/b/
        for _ in range(150):  # compacts the file twice
            await purge(node, {"prefix": "http://video.test/other/"})
        marks = set(node.edge.node.store.purges.marks)
        assert marks == {(SITE, HOST, "/gone/"), (SITE, HOST, "/a/"), (SITE, HOST, "/other/")}
        assert log_lines(node) <= 1 + 3 + 64
        await get(node, "/gone/x")  # a miss: stored again, under the new generation
        assert [origin.hits[p] for p in paths] == [2, 1, 1, 1, 1]
    async with admin_node(cfg) as node:  # the node was down; it comes back with its purges
        assert set(node.edge.node.store.purges.marks) == marks
        for _ in range(2):
            for p in paths:
                await get(node, p)
        # /gone/x was stored after its purge: a hit. The rest under /gone/ and /a/ are misses, once.
        assert [origin.hits[p] for p in paths] == [2, 2, 1, 2, 2]


async def test_a_new_scope_past_the_limit_gets_429_and_a_broader_purge_still_works(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    purged = PurgeTable.purged
    monkeypatch.setattr(
        PurgeTable, "purged", lambda self, scope, gen, soft, limit=3: purged(self, scope, gen, soft, limit)
    )
    async with admin_node(node_config(origin, tmp_path / "c")) as node:
        for i in range(3):
            await purge(node, {"prefix": f"http://video.test/d{i}/"})
        status, answer = await node.call("POST", "/purge", json={"prefix": "http://video.test/d3/"})
        assert (status, answer) == (
            429,
            {
                "error": "the purge table holds 3 directories of site 'videos' (at most 3 a site): purge a broader "
                "prefix or the whole site, which takes the place of those under it"
            },
        )
        await purge(node, {"prefix": "http://video.test/d0/"})  # a scope it has: no new entry
        await purge(node, {"site": SITE})
        await purge(node, {"prefix": "http://video.test/d3/"})
        assert set(node.edge.node.store.purges.marks) == {(SITE, "", ""), (SITE, HOST, "/d3/")}


async def test_a_site_purge_holds_after_a_restart_that_lists_the_disks_in_another_order(
    origin: Origin, tmp_path: Path
) -> None:
    """The purge log lives on the first disk. With the disks listed in another order (or the first one taken out
    of the list), the node read the new first disk's log, which had no purge: the purged objects still stored
    were hits again (the site purge confirmed, 200). The newest log on any of the node's disks is the one."""
    from dataclasses import replace

    from edgecache.config.model import Config, Disk

    paths = [f"/p{i}" for i in range(6)]
    for p in paths:
        origin.put(p, p.encode() * 1000)
    one, two = Disk(tmp_path / "d1", 64 * 2**20), Disk(tmp_path / "d2", 64 * 2**20)
    base = node_config(origin, one.path)

    def listing(*disks: Disk) -> Config:
        return replace(base, cache=replace(base.cache, dir=disks[0].path, disk_bytes=2 * one.size, disks=disks))

    async with admin_node(listing(one, two)) as node:
        for p in paths:
            assert (await node.edge.get(p))[::2] == (200, p.encode() * 1000)
        await node.edge.node.engine.flush()
        await purge(node, {"site": SITE})
    async with admin_node(listing(two, one)) as node:
        for p in paths[:3]:
            status, headers, body = await node.edge.get(p)
            assert (status, body) == (200, p.encode() * 1000)
            assert headers["Cache-Status"] == "edgecache; fwd=uri-miss; stored"
        await purge(node, {"url": "http://video.test/p1"})
    async with admin_node(listing(one, two)) as node:
        for p in paths[1:4]:  # purged twice (/p1), once (the rest): a miss again after the first purge or the second
            status, headers, body = await node.edge.get(p)
            assert (status, body) == (200, p.encode() * 1000)
            assert headers["Cache-Status"] == ("edgecache; hit" if p == "/p2" else "edgecache; fwd=uri-miss; stored")
    assert {p: origin.hits[p] for p in paths} == {"/p0": 2, "/p1": 3, "/p2": 2, "/p3": 2, "/p4": 1, "/p5": 1}


async def test_one_providers_purges_leave_another_sites_share_of_the_table(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound was the node's: one provider's token, with 10,000 directory purges of its own site (31 s of
    requests), left every other provider's directory purges refused with 429 until an operator purged that site
    whole. The bound is each site's now."""
    purged = PurgeTable.purged
    monkeypatch.setattr(
        PurgeTable, "purged", lambda self, scope, gen, soft, limit=3: purged(self, scope, gen, soft, limit)
    )
    other = Site(name="other", hosts=("other.test",), origins=(origin.url,))
    origin.put("/news/a", b"old")
    async with admin_node(node_config(origin, tmp_path / "c", other)) as node:
        assert (await node.edge.get("/news/a", host="other.test"))[2] == b"old"
        for i in range(3):
            status, answer = await node.call("POST", "/purge", VIDEOS, json={"prefix": f"http://video.test/d{i}/"})
            assert status == 200, answer
        status, answer = await node.call("POST", "/purge", VIDEOS, json={"prefix": "http://video.test/d3/"})
        assert (status, answer) == (
            429,
            {
                "error": "the purge table holds 3 directories of site 'videos' (at most 3 a site): purge a broader "
                "prefix or the whole site, which takes the place of those under it"
            },
        )
        await purge(node, {"prefix": "http://other.test/news/"})
        origin.put("/news/a", b"new")
        assert (await node.edge.get("/news/a", host="other.test"))[2] == b"new"
    assert origin.hits["/news/a"] == 2


async def test_a_provider_purges_its_whole_site_when_other_sites_fill_the_table(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten other sites' directory purges (one provider's ten sites, or ten providers) filled the node's ceiling of
    ten shares, and the videos provider's purge of its own whole site got 429: its stale object was served on."""
    purged = PurgeTable.purged
    monkeypatch.setattr(
        PurgeTable, "purged", lambda self, scope, gen, soft, limit=3: purged(self, scope, gen, soft, limit)
    )
    others = [Site(name=f"s{i}", hosts=(f"s{i}.test",), origins=(origin.url,)) for i in range(10)]
    origin.put("/a", b"old")
    async with admin_node(node_config(origin, tmp_path / "c", *others)) as node:
        assert (await node.edge.get("/a"))[2] == b"old"
        for i, d in itertools.product(range(10), range(3)):
            await purge(node, {"prefix": f"http://s{i}.test/d{d}/"})
        status, answer = await node.call("POST", "/purge", VIDEOS, json={"prefix": "http://video.test/d/"})
        assert (status, answer) == (429, {"error": (
            "the purge table holds 30 directories of all sites (at most 30): purge a broader prefix or a whole site"
        )})  # fmt: skip
        status, answer = await node.call("POST", "/purge", VIDEOS, json={"site": SITE})
        whole = {"kind": "site", "site": SITE, "host": "", "path": "", "soft": False}
        assert (status, answer["purged"]) == (200, whole)
        origin.put("/a", b"new")
        assert (await node.edge.get("/a"))[2] == b"new"
        assert len(node.edge.node.store.purges.marks) == 31
    assert [(s.method, s.path) for s in origin.seen] == [("GET", "/a"), ("GET", "/a")]
