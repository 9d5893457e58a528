"""A disk that hangs (a write that never returns) while requests are in flight: once the probe takes it out of
service, those requests are answered with the origin's exact bytes, as later ones are. Before, every call queued
behind the hung write waited for good: a miss in flight was never answered, and its fill held its origin
connection until the node restarted."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20


async def test_a_miss_in_flight_when_its_disk_hangs_is_answered_once_the_disk_is_out(
    origin: Origin, tmp_path: Path
) -> None:
    big = bytes(range(256)) * (64 * 1024)  # 16 slices: more writes than the disk has threads, and reads behind them
    origin.put("/big", big)
    origin.put("/small", b"s" * 5000)
    config = make_config(tmp_path / "cache", [origin.url])
    hung, entered = threading.Event(), threading.Event()
    async with start_edge(config) as edge:
        assert (await edge.get("/small"))[0] == 200
        slot = edge.node.store.disk._slots[0]
        tier = slot.tier
        assert tier is not None
        real_place = tier._slice_disk.place

        def hangs(value: bytes) -> Any:
            if len(value) == MiB:  # a slice's file: the device stops answering
                entered.set()
                hung.wait()
            return real_place(value)

        tier._slice_disk.place = hangs  # type: ignore[method-assign]
        try:
            request = asyncio.ensure_future(edge.get("/big"))
            assert await asyncio.to_thread(entered.wait, 10)
            # What the probe finds wrong with the disk (a hung one: no answer within its time limit).
            config.cache.dir.rename(tmp_path / "elsewhere")
            config.cache.dir.mkdir()
            async with asyncio.timeout(10):
                status, _, body = await request
            assert (status, len(body), body == big) == (200, len(big), True)
            assert slot.failed is not None
            status, _, body = await edge.get("/big")  # and the next one, without the disk
            assert (status, body == big) == (200, True)
        finally:
            hung.set()
    assert origin.hits["/small"] == 1
