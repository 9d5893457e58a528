"""A slice whose index row outlived its file (a crash between an eviction's unlink and its commit, a file deleted
by hand, a filesystem's repair) is fetched again, on a node of several workers as on one, never answered 502.

The workers coordinate through the shared disk: a slice that disk says it holds is not leased for a fetch (its lease
stops at a stored value) and is waited for as stored. A row without its file said so for good: every request for
the object got 502 "slice 3 could not be read", and the origin was never asked.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp

from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_workers import DATA, READY, MiB, two_workers
from tests.origin import Origin

HEADERS = {"Host": "video.test", "Connection": "close"}  # a new connection each: either worker answers


def _file_of(cache_dir: Path, index: int) -> Path:
    db = next(cache_dir.rglob("cache.db"))
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT filename FROM Cache WHERE key LIKE ?", (f"s:%:{index}",)).fetchall()
    assert len(rows) == 1
    return db.parent / rows[0][0]


async def test_a_slice_whose_file_is_gone_is_fetched_again_by_every_worker(origin: Origin, tmp_path: Path) -> None:
    origin.put("/w.bin", DATA)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    async with aiohttp.ClientSession() as s:
        async with (
            edge_process("serve", "--config", str(cfg), ready=READY),
            s.get(f"http://127.0.0.1:{port}/w.bin", headers=HEADERS) as r,
        ):
            assert (r.status, await r.read()) == (200, DATA)
        _file_of(tmp_path / "c", 3).unlink()  # its row stays: the disk says slice 3 is stored
        async with edge_process("serve", "--config", str(cfg), ready=READY):
            for _ in range(4):
                ranged = {**HEADERS, "Range": f"bytes={3 * MiB}-{3 * MiB + 9}"}
                async with s.get(f"http://127.0.0.1:{port}/w.bin", headers=ranged) as r:
                    assert (r.status, await r.read()) == (206, DATA[3 * MiB : 3 * MiB + 10])
                async with s.get(f"http://127.0.0.1:{port}/w.bin", headers=HEADERS) as r:
                    assert (r.status, await r.read()) == (200, DATA)
    ranges = [x.headers.get("Range") for x in origin.seen if x.path == "/w.bin"]
    assert ranges[0] is None  # the first fill, whole
    assert ranges[1:] == [f"bytes={3 * MiB}-{4 * MiB - 1}"]  # slice 3 once again, then served from the disk
