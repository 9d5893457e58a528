"""What a worker killed with SIGKILL leaves behind on a node that runs for weeks: nothing that piles up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edgecache.core.rundirs import LOCK
from tests.e2e.test_watchdog import DATA, WAIT, get, metrics_until, node, until, write_config
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
    origin: Origin, tmp_path: Path, short_tmp: Path
) -> None:
    """Worker 0's internal socket (for prefetch jobs) was in a temporary directory only an orderly exit removed:
    every SIGKILL of it left one more /tmp/edgecache-XXXX behind, for good."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    cfg.write_text(cfg.read_text() + TOKENS)
    tmp = short_tmp
    async with node(cfg, TMPDIR=str(tmp)) as n:
        await n.expect("edgecache listening on", 2)
        await n.expect("admin listening on")
        before = sorted(p.name for p in tmp.iterdir())
        # The internal socket's directory (with the fork server's socket in it), the workers' metrics files.
        assert len(before) == 2
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
    origin: Origin, tmp_path: Path, short_tmp: Path
) -> None:
    """Every worker that died left its counter, histogram and max-gauge files in the metrics directory, and every
    /metrics read them all on worker 0's loop: a crash loop made each scrape slower for good (1.2 s at 1,000)."""
    origin.put("/v.bin", DATA)
    cfg, port, admin = write_config(tmp_path, origin, workers=2)
    tmp = short_tmp
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
            kept = ("counter_archive.db", "histogram_archive.db", LOCK)  # LOCK: the node's mark (edgecache.rundirs)
            assert path.name in kept or int(path.stem.rsplit("_")[-1]) in live
        assert {p.name for p in metrics.glob("*_archive.db")} == {"counter_archive.db", "histogram_archive.db"}
        await metrics_until(admin, lambda seen: requests_total(seen) == 6, "the 6 requests still counted")
        assert await get(port, "/v.bin") == (200, DATA)
        await metrics_until(admin, lambda seen: requests_total(seen) == 7, "7 requests")
        assert origin.hits["/v.bin"] == 1
        assert await n.stop() == 0


def unnamed_values(disk: Path) -> set[str]:
    """The value files of `disk` that no row of its index names (relative paths)."""
    with contextlib.closing(sqlite3.connect(f"file:{disk}/cache.db?mode=ro", uri=True)) as con:
        named = {r[0] for r in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    return {str(p.relative_to(disk)) for p in disk.rglob("*.val")} - named


def holder_of(pids: list[int], local: int, remote: int) -> int:
    """Which of `pids` holds the TCP connection from 127.0.0.1:`local` to 127.0.0.1:`remote` (read from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1:3] == [f"0100007F:{local:04X}", f"0100007F:{remote:04X}"]:
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    raise AssertionError(f"no connection from port {local} to port {remote}")


async def test_value_files_a_killed_worker_left_are_deleted_while_others_run(origin: Origin, tmp_path: Path) -> None:
    """A worker killed between a value file's write and its row's commit leaves a file no row names. Only a process
    that opens a disk alone deleted such files (at a start of the whole node), never a worker replacing one that
    died beside others: a soak that killed a worker 12 times in 5 minutes left 27 of them (5 MB) outside the
    budget until the node restarted, weeks later. The parent deletes them once a file written before the death
    whose row is still missing cannot be a live write's; one written after it is kept."""
    # Random, made off the loop: the 3 Mi-step generator this was took 300-578 ms on the loop (its stall guard's
    # limit is 500).
    big = await asyncio.to_thread(os.urandom, 3 * 2**20 + 5)
    origin.put("/v.bin", DATA)
    origin.put("/big.bin", big)
    held, sent = asyncio.Event(), asyncio.Event()
    edge_ports: list[int] = []

    async def hold(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.raw_path != "/big.bin" or edge_ports:  # the first fill only
            return None
        assert request.transport is not None
        edge_ports.append(request.transport.get_extra_info("peername")[1])
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"v1"'})
        resp.content_length = len(big)
        await resp.prepare(request)
        await resp.write(big[: 2 * 2**20 + 1])  # two slices and a byte of the third: a fill in the middle
        sent.set()
        await held.wait()
        return resp

    origin.on_request = hold
    cfg, port, _ = write_config(tmp_path, origin, workers=2)
    disk = tmp_path / "cache"
    try:
        async with node(cfg, EDGECACHE_TEST_HOOKS="1", EDGECACHE_TEST_ORPHAN_SETTLE="1") as n:
            await n.expect("edgecache listening on", 2)
            assert await get(port, "/v.bin") == (200, DATA)
            # What a kill between a file's write and its row's commit leaves (diskcache's naming), written before it.
            orphans = [f"ab/cd/{'0' * 28}.val", f"fe/01/{'1' * 28}.val"]
            for rel in orphans:
                (disk / rel).parent.mkdir(parents=True, exist_ok=True)
                (disk / rel).write_bytes(os.urandom(2**20))
            await until(lambda: unnamed_values(disk) == set(orphans))  # /v.bin's row committed, after its answer
            fill = asyncio.ensure_future(get(port, "/big.bin"))
            await asyncio.wait_for(sent.wait(), WAIT)
            victim = holder_of([n.pid_of(0), n.pid_of(1)], edge_ports[0], origin.port)  # the fill's worker
            slot = 0 if victim == n.pid_of(0) else 1
            os.kill(victim, signal.SIGKILL)
            await n.expect(f"worker {slot} (pid {victim}) died: killed by SIGKILL")
            young = disk / "77" / "00" / ("2" * 28 + ".val")  # a live write, its row not committed yet
            young.parent.mkdir(parents=True, exist_ok=True)
            young.write_bytes(b"in flight")
            os.utime(young, (time.time() + 60, time.time() + 60))  # written after the death, whatever the clock's grain
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                await fill  # cut short with its worker, or answered whole by the other one
            await n.expect(f"worker {slot} started: pid ", 2)
            await n.expect("value files no row named")
            # What the dead worker left is deleted, a write after its death kept. Files the test did not plant may be
            # there too under load (seen once in a full run: two, not explained), so only these two are asserted.
            unnamed = unnamed_values(disk)
            assert not unnamed & set(orphans)
            assert str(young.relative_to(disk)) in unnamed
            young.unlink()
            held.set()
            assert await get(port, "/v.bin") == (200, DATA)
            assert await get(port, "/big.bin") == (200, big)
            assert await get(port, "/big.bin") == (200, big)
            assert origin.hits["/v.bin"] == 1
            await until(lambda: unnamed_values(disk) == set())  # a write answered may still be committing its row
            assert await n.stop() == 0
    finally:
        held.set()  # a failed test must not hold the origin's shutdown
