"""A worker's stop on a stalled disk ends within what the parent allows it past the drain: cache.save_on_stop and
supervisor.KILL_AFTER, after which it is killed and everything memory alone held is lost. Engine.close waited 10 s
for the fills' disk writes, then 10 s for the exclusive tiers' spills, and only then saved memory
(storage.tiers.keep_on_stop): on a disk that stalls, the save never started before the kill."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecache.supervisor import KILL_AFTER
from tests.e2e.test_exclusive_tiers import BODIES, exclusive_edge, get, settled
from tests.origin import Origin


async def test_a_stop_on_a_stalled_disk_ends_within_the_save_and_the_kill_margin(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with exclusive_edge(origin, tmp_path, True) as edge:
        store = edge.node.store
        await get(edge, "/o0")
        stalled, put = asyncio.Event(), store.disk.put
        writes = 0

        async def stalling(name: str, *args: object, **kw: object) -> bool:
            nonlocal writes
            if name.startswith("s:"):  # a slice's write (metadata still lands: the fills go on)
                writes += 1
                await stalled.wait()  # the disk answers only once the test lets it
            return await put(name, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(store.disk, "put", stalling)
        for n in range(1, 5):  # /o0's two slices are evicted: their spills wait on the disk
            status, _, body = await edge.get(f"/o{n}")
            assert (status, body) == (200, BODIES[f"/o{n}"])
        assert store.spilling > 0
        save = 0.5
        try:
            async with asyncio.timeout(save + KILL_AFTER):  # what the parent allows past the drain
                await edge.node.engine.close(save)
        finally:
            stalled.set()
        assert writes >= 3  # the spills, then the save's first write, which stalled too
        await settled(edge)
