"""What a worker killed with SIGKILL leaves behind on a node that runs for weeks: nothing that piles up."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.test_watchdog import DATA, WAIT, get, metrics_until, node, write_config
from tests.origin import Origin

TOKEN = "ops-token-0123456789abcdef"
TOKENS = f'[[admin.tokens]]\nname = "ops"\ntoken = "{TOKEN}"\nrole = "operator"\n'


async def prefetch(admin: int, url: str) -> dict[str, Any]:
    """A prefetch job of `url` through the admin API; the job once it has ended."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{admin}", headers=headers) as s, asyncio.timeout(WAIT):
        async with s.post("/prefetch", json={"urls": [url]}) as r:
            assert r.status == 202, await r.text()
            job = (await r.json())["id"]
        while True:
            async with s.get(f"/prefetch/{job}") as r:
                view: dict[str, Any] = await r.json()
            if view["state"] not in ("queued", "running"):
                return view
            await asyncio.sleep(0.05)


async def test_a_killed_admin_worker_leaves_no_directory_and_its_successor_prefetches(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker 0's internal socket (for prefetch jobs) was in a temporary directory only an orderly exit removed:
    every SIGKILL of it left one more /tmp/edgecache-XXXX behind, for good."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    cfg.write_text(cfg.read_text() + TOKENS)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    async with node(cfg, TMPDIR=str(tmp)) as n:
        await n.expect("edgecache listening on", 2)
        await n.expect("admin listening on")
        before = sorted(p.name for p in tmp.iterdir())
        assert len(before) == 2  # the internal socket's directory and the workers' metrics files
        for round in (1, 2):
            victim = n.pid_of(0)
            os.kill(victim, signal.SIGKILL)
            await n.expect(f"worker 0 (pid {victim}) died: killed by SIGKILL")
            await n.expect("admin listening on", 1 + round)
            assert sorted(p.name for p in tmp.iterdir()) == before
        view = await prefetch(admin, "http://video.test/v.bin")  # through the socket bound again
        assert (view["state"], view["fetched"], origin.hits["/v.bin"]) == ("done", 1, 1)
        assert await get(port, "/v.bin") == (200, DATA)
        assert origin.hits["/v.bin"] == 1
        assert await n.stop() == 0
    assert list(tmp.iterdir()) == []


def requests_total(seen: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in seen.splitlines() if line.startswith("edgecache_requests_total{")
    )


async def test_the_metrics_of_killed_workers_are_kept_in_two_files_not_three_each(
    origin: Origin, tmp_path: Path
) -> None:
    """Every worker that died left its counter, histogram and max-gauge files in the metrics directory, and every
    /metrics read them all on worker 0's loop: a crash loop made each scrape slower for good (1.2 s at 1,000)."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    async with node(cfg, TMPDIR=str(tmp)) as n:
        await n.expect("edgecache listening on", 2)
        await n.expect("admin listening on")
        for _ in range(6):
            assert await get(port, "/v.bin") == (200, DATA)
        await metrics_until(admin, lambda seen: requests_total(seen) == 6, "6 requests")
        for round in (1, 2, 3):
            victim = n.pid_of(1)
            os.kill(victim, signal.SIGKILL)
            await n.expect(f"worker 1 (pid {victim}) died: killed by SIGKILL")
            await n.expect("edgecache listening on", 2 + round)
        (metrics,) = tmp.glob("edgecache-metrics-*")
        live = {n.pid_of(0), n.pid_of(1)}
        for path in metrics.iterdir():
            assert path.name in ("counter_archive.db", "histogram_archive.db") or int(path.stem.rsplit("_")[-1]) in live
        assert {p.name for p in metrics.glob("*_archive.db")} == {"counter_archive.db", "histogram_archive.db"}
        await metrics_until(admin, lambda seen: requests_total(seen) == 6, "the 6 requests still counted")
        assert await get(port, "/v.bin") == (200, DATA)
        await metrics_until(admin, lambda seen: requests_total(seen) == 7, "7 requests")
        assert origin.hits["/v.bin"] == 1
        assert await n.stop() == 0
