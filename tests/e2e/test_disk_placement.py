"""A change of cache.disks never brings a purged copy back: keys that move between disks leave records behind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecache.config import Config, Disk
from tests.e2e.adminkit import admin_node, node_config
from tests.origin import Origin

PATHS = [f"/gen/m{n}" for n in range(1, 13)]


def disks(tmp_path: Path, *names: str) -> tuple[Disk, ...]:
    return tuple(Disk(tmp_path / name, 64 * 2**20) for name in names)


async def test_a_purge_taken_under_other_disks_holds_when_the_disks_change_back(origin: Origin, tmp_path: Path) -> None:
    two, three = disks(tmp_path, "a", "b"), disks(tmp_path, "a", "b", "c")
    for p in PATHS:
        origin.put(p, b"old " + p.encode())
    base = node_config(origin, tmp_path / "a")

    def config(listed: tuple[Disk, ...]) -> Config:
        return replace(base, cache=replace(base.cache, dir=listed[0].path, disks=listed))

    async with admin_node(config(two)) as node:
        for p in PATHS:
            assert (await node.edge.get(p))[2] == b"old " + p.encode()
    async with admin_node(config(three)) as node:
        for p in PATHS:
            status, answer = await node.call("POST", "/purge", json={"url": f"http://video.test{p}"})
            assert (status, answer["confirmed"]) == (200, 1), answer
    for p in PATHS:
        origin.put(p, b"new " + p.encode(), etag='"v2"')
    hits_before = sum(origin.hits[p] for p in PATHS)
    async with admin_node(config(two)) as node:
        for _ in range(2):
            for p in PATHS:
                status, headers, body = await node.edge.get(p)
                assert (status, body) == (200, b"new " + p.encode()), headers.get("Cache-Status")
    assert sum(origin.hits[p] for p in PATHS) == hits_before + len(PATHS)
    # The same disks again: nothing is doubted, every object is a hit.
    async with admin_node(config(two)) as node:
        for p in PATHS:
            status, headers, body = await node.edge.get(p)
            assert (status, body) == (200, b"new " + p.encode())
            assert "hit" in headers["Cache-Status"], headers["Cache-Status"]
    assert sum(origin.hits[p] for p in PATHS) == hits_before + len(PATHS)
