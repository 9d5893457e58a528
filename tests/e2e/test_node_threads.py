"""A closed node leaves no thread behind: a node reloaded or restarted within one process (and every test of this
suite) would otherwise keep each one's threads, and the memory they keep alive, for as long as the process lives."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20
OPENS = 3


async def open_serve_close(cache_dir: Path) -> None:
    """A node opened on `cache_dir`, a miss and a hit of three slices (the disk's threads at work), closed."""
    origin = Origin()
    await origin.start()
    try:
        body = bytes(range(256)) * (3 * MiB // 256)
        origin.put("/three.bin", body)
        async with start_edge(make_config(cache_dir, [origin.url])) as edge:
            for _ in range(2):
                status, _headers, got = await edge.get("/three.bin")
                assert (status, got == body) == (200, True)
    finally:
        await origin.stop()


def test_a_node_opened_and_closed_again_and_again_leaves_no_thread(tmp_path: Path) -> None:
    # Its own loop, closed at the end, so that the loop's default executor is no thread of the node's. With the
    # collector off until the threads are counted: a thread that ends only once the collector finds its node is a
    # thread left behind for as long as the collector waits (late in a long run, hundreds of them).
    before = set(threading.enumerate())
    gc.disable()
    try:
        with asyncio.Runner() as runner:
            for _ in range(OPENS):
                runner.run(open_serve_close(tmp_path / "cache"))
        for thread in set(threading.enumerate()) - before:
            thread.join(timeout=5)  # a pool shut down without waiting ends its idle threads just after
        left = sorted(t.name for t in set(threading.enumerate()) - before)
    finally:
        gc.enable()
    assert left == []
