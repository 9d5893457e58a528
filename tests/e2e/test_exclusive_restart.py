"""Exclusive tiers across a restart (storage.tiers.keep_on_stop): a graceful stop writes the slices only memory held
to disk, hottest first, within cache.save_on_stop and the disk budget, so the node started again on the same cache
dir answers them from disk, not from origin. On real node processes, with a memory tier larger than a tiny disk.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import aiohttp

from edgecache.storage.memory import ENTRY_OVERHEAD
from tests.conftest import make_config, start_edge
from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin

SLICE = 64 * 1024
CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[cache]
dir = "{cache}"
memory = "4MiB"
memory_policy = "lru"
memory_headroom = 0
disk = "1MiB"
slice = "64KiB"
tiers = "exclusive"
{save}
[[sites]]
name = "a"
hosts = ["a.test"]
origins = ["{origin}"]
"""
READY = {b"edgecache listening on": 1}
SAVED = re.compile(
    rb"wrote (\d+) of the (\d+) slices only memory held to disk \((\d+) bytes\) in [\d.]+ s; not written: (\d+) past"
    rb" cache.save_on_stop \([\d.]+ s\), (\d+) past the disk budget, (\d+) stale, (\d+) failed"
)


def bodies(n: int) -> dict[str, bytes]:
    return {f"/o{i}": os.urandom(2 * SLICE) for i in range(n)}  # two slices each


async def get_all(port: int, paths: list[str], want: dict[str, bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for path in paths:
            async with session.get(f"http://127.0.0.1:{port}{path}", headers={"Host": "a.test"}) as r:
                assert (r.status, await r.read()) == (200, want[path])


async def serve_then_stop(node: tuple[Path, int], paths: list[str], want: dict[str, bytes]) -> tuple[int, ...]:
    """Start the node (its config file and port), GET `paths` in order, SIGTERM it; what it logged of its save
    (written, held, bytes, late, no_room, stale, failed), once it has exited with status 0 by itself (never the
    parent's kill)."""
    path, port = node
    async with edge_process("serve", "--config", str(path), ready=READY) as proc:
        await get_all(port, paths, want)
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        log = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert b"killing it" not in log
    found = SAVED.findall(log)
    assert len(found) <= 1
    return tuple(int(x) for x in found[0]) if found else ()  # () if not logged: asserted after the restart


def write_config(tmp_path: Path, origin: Origin, save: str = "") -> tuple[Path, int]:
    path, port = tmp_path / "edge.toml", free_port()
    path.write_text(CONFIG.format(port=port, cache=tmp_path / "c", origin=origin.url, save=save))
    return path, port


async def test_a_graceful_stop_writes_memory_to_disk_and_the_restarted_node_serves_it_from_there(
    origin: Origin, tmp_path: Path
) -> None:
    want = bodies(4)  # 8 slices: in memory only (4 MiB), half the disk (1 MiB): what a save may write
    for p, body in want.items():
        origin.put(p, body)
    node = write_config(tmp_path, origin)
    saved = await serve_then_stop(node, list(want), want)
    await serve_then_stop(node, list(want), want)  # a new process, the same cache dir
    assert dict(origin.hits) == dict.fromkeys(want, 1)  # disk hits: no origin fetch again
    assert saved == (8, 8, 8 * SLICE, 0, 0, 0, 0)


async def test_a_stop_writes_the_hottest_slices_half_the_disk_budget_holds_and_no_more(
    origin: Origin, tmp_path: Path
) -> None:
    want = bodies(12)  # 24 slices in memory; a save writes half the disk, 8
    for p, body in want.items():
        origin.put(p, body)
    node = write_config(tmp_path, origin)
    hot = ["/o0", "/o1", "/o2", "/o3"]
    # LRU: the hottest are the most recently used, /o0-/o3 (used again last), then /o11 down to /o4.
    saved = await serve_then_stop(node, [*want, *hot], want)
    assert dict(origin.hits) == dict.fromkeys(want, 1)  # the hot ones were memory hits
    await serve_then_stop(node, list(want), want)
    # /o0-/o3 were written; the rest, past the byte bound, are fetched again.
    assert dict(origin.hits) == {p: 1 if p in hot else 2 for p in want}
    assert saved == (8, 24, 8 * SLICE, 0, 16, 0, 0)


async def test_save_on_stop_zero_writes_nothing_and_the_restart_fetches_again(origin: Origin, tmp_path: Path) -> None:
    want = bodies(2)
    for p, body in want.items():
        origin.put(p, body)
    node = write_config(tmp_path, origin, "save_on_stop = 0")
    saved = await serve_then_stop(node, list(want), want)
    await serve_then_stop(node, list(want), want)
    assert dict(origin.hits) == dict.fromkeys(want, 2)
    assert saved == (0, 4, 0, 4, 0, 0, 0)


async def test_the_save_ends_at_its_time_bound_on_a_disk_that_stalls(origin: Origin, tmp_path: Path) -> None:
    """One write goes through, the next hangs (a stalled disk, which cannot be made here): the save ends at
    cache.save_on_stop with that write cancelled and the rest not started, counted late."""
    want = bodies(3)
    for p, body in want.items():
        origin.put(p, body)
    memory = 16 * (SLICE + ENTRY_OVERHEAD)
    config = make_config(tmp_path / "c", [origin.url], memory_bytes=memory, disk_bytes=64 * SLICE, slice_bytes=SLICE)
    config = replace(config, cache=replace(config.cache, memory_policy="lru", tiers="exclusive", save_on_stop=0.2))
    async with start_edge(config) as edge:
        store = edge.node.store
        for p in want:
            status, _, body = await edge.get(p, host="video.test")
            assert (status, body) == (200, want[p])
        await asyncio.gather(*edge.node.engine._tasks)
        put = store.disk.put
        stalled = asyncio.Event()
        writes: list[str] = []

        async def stalling(name: str, value: bytes, **kw: bool) -> bool:
            writes.append(name)
            if len(writes) > 1:
                await stalled.wait()  # never set
            return await put(name, value, **kw)

        store.disk.put = stalling  # type: ignore[method-assign]
        done = await store.keep_on_stop(0.2)
        store.disk.put = put  # type: ignore[method-assign]
        assert (done["written"], done["late"], done["bytes"], len(writes)) == (1, 5, SLICE, 2)
        assert await store.disk.contains(writes) == [True, False]
