"""The pause watch of a node with peers (PurgeSync.watch): a reload that changes cluster.timeout changes the pace of
its ticks and the gap taken for a pause together."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from edgecache.cluster.purgesync import PurgeSync
from edgecache.storage.purging import Purging


class _Counted(Purging):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.ticks = 0
        self.ticked = asyncio.Event()

    def tick(self) -> None:
        super().tick()
        self.ticks += 1
        self.ticked.set()

    async def ticks_more(self, n: int) -> None:
        goal = self.ticks + n
        while self.ticks < goal:
            self.ticked.clear()
            await self.ticked.wait()


async def test_a_reload_that_lengthens_cluster_timeout_is_not_taken_for_a_pause(tmp_path: Path) -> None:
    store = _Counted(tmp_path)
    paused: list[int] = []
    settings = SimpleNamespace(timeout=0.25)
    sync = SimpleNamespace(view=SimpleNamespace(settings=settings), store=store, _paused=lambda: paused.append(1))
    watch = asyncio.create_task(PurgeSync.watch(sync))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(store.ticks_more(2), 10)
        settings.timeout = 2.0  # what server.reload does: ticks every 0.5 s from now, each within the new limit
        await asyncio.wait_for(store.ticks_more(3), 10)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        store._purge_io.shutdown()
    assert paused == []
