"""A change of cache.disks never brings a purged copy back: keys that move between disks leave records behind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecache.config import Config, Disk
from edgecache.server import reload
from tests.e2e.adminkit import admin_node, node_config
from tests.origin import Origin

PATHS = [f"/gen/m{n}" for n in range(1, 13)]


def on(base: Config, listed: tuple[Disk, ...]) -> Config:
    """`base` with the disks `listed`, the first of them the node's own directory."""
    return replace(base, cache=replace(base.cache, dir=listed[0].path, disks=listed))


def disks(tmp_path: Path, *names: str) -> tuple[Disk, ...]:
    return tuple(Disk(tmp_path / name, 64 * 2**20) for name in names)


async def test_a_purge_taken_under_other_disks_holds_when_the_disks_change_back(origin: Origin, tmp_path: Path) -> None:
    two, three = disks(tmp_path, "a", "b"), disks(tmp_path, "a", "b", "c")
    for p in PATHS:
        origin.put(p, b"old " + p.encode())
    base = node_config(origin, tmp_path / "a")

    async with admin_node(on(base, two)) as node:
        for p in PATHS:
            assert (await node.edge.get(p))[2] == b"old " + p.encode()
    async with admin_node(on(base, three)) as node:
        for p in PATHS:
            status, answer = await node.call("POST", "/purge", json={"url": f"http://video.test{p}"})
            assert (status, answer["confirmed"]) == (200, 1), answer
    for p in PATHS:
        origin.put(p, b"new " + p.encode(), etag='"v2"')
    hits_before = sum(origin.hits[p] for p in PATHS)
    async with admin_node(on(base, two)) as node:
        for _ in range(2):
            for p in PATHS:
                status, headers, body = await node.edge.get(p)
                assert (status, body) == (200, b"new " + p.encode()), headers.get("Cache-Status")
    assert sum(origin.hits[p] for p in PATHS) == hits_before + len(PATHS)
    # The same disks again: nothing is doubted, every object is a hit.
    async with admin_node(on(base, two)) as node:
        for p in PATHS:
            status, headers, body = await node.edge.get(p)
            assert (status, body) == (200, b"new " + p.encode())
            assert "hit" in headers["Cache-Status"], headers["Cache-Status"]
    assert sum(origin.hits[p] for p in PATHS) == hits_before + len(PATHS)


async def test_a_disk_out_of_service_at_a_change_and_back_on_a_reload_learns_of_the_change(
    origin: Origin, tmp_path: Path
) -> None:
    """A disk that could not be opened at the start after a change, then brought back by a reload, is told of the
    change: otherwise its record still named the old list, and with that list again the purges taken meanwhile on
    the keys' new disks were undone (its copies hits again)."""
    one, two = disks(tmp_path, "a"), disks(tmp_path, "a", "c")
    a = one[0].path
    for p in PATHS:
        origin.put(p, b"old " + p.encode())
    base = node_config(origin, tmp_path / "a")

    async with admin_node(on(base, one)) as node:
        for p in PATHS:
            assert (await node.edge.get(p))[2] == b"old " + p.encode()
    a.rename(tmp_path / "a.away")
    a.write_bytes(b"not a directory")  # a cannot be opened: it starts out of service
    async with admin_node(on(base, two)) as node:
        assert list(node.edge.node.store.disk.failed) == [str(a)]
        a.unlink()
        (tmp_path / "a.away").rename(a)
        await reload(node.edge.node)  # a works again: back in service
        assert node.edge.node.store.disk.failed == {}
        for p in PATHS:
            status, answer = await node.call("POST", "/purge", json={"url": f"http://video.test{p}"})
            assert (status, answer["confirmed"]) == (200, 1), answer
    for p in PATHS:
        origin.put(p, b"new " + p.encode(), etag='"v2"')
    async with admin_node(on(base, one)) as node:
        for p in PATHS:
            status, headers, body = await node.edge.get(p)
            assert (status, body) == (200, b"new " + p.encode()), (p, headers.get("Cache-Status"))


async def test_a_change_learnt_on_a_reload_reaches_the_hits_the_fast_path_remembers(
    origin: Origin, tmp_path: Path
) -> None:
    """The fast path keeps a hit's answer while what it was decided from is unchanged (Hit.still): a change of the
    disks learnt on a reload must end those too, or what was stored before it is served unasked until the copy's
    Age next ticks past what the memo holds."""
    one, two = disks(tmp_path, "a"), disks(tmp_path, "a", "c")
    a = one[0].path
    origin.put("/m", b"old")
    base = node_config(origin, tmp_path / "a")

    async with admin_node(on(base, one)) as node:
        assert (await node.edge.get("/m"))[2] == b"old"
    a.rename(tmp_path / "a.away")
    a.write_bytes(b"not a directory")
    async with admin_node(on(base, two)) as node:
        for _ in range(2):  # a miss, then a hit the fast path remembers
            assert (await node.edge.get("/m"))[2] == b"old"
        assert origin.hits["/m"] == 2
        a.unlink()
        (tmp_path / "a.away").rename(a)
        await reload(node.edge.node)  # a is back, and with it the news of the change
        status, headers, body = await node.edge.get("/m")
        assert (status, body) == (200, b"old")
        assert origin.hits["/m"] == 3, headers.get("Cache-Status")  # asked again (a 304), not a remembered hit
