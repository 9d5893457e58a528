"""A disk holds its budget under a workload larger than it: the values the disk tier keeps, and the space the
filesystem really gives them (files the node holds open included).

Three leaks, each of which filled a disk past what its budget says it holds; and two ways an unmounted disk's
writes landed on the parent filesystem (a reload that reopened the bare mount point; writes until the probe
took the disk out of service, made by path):
- a slice evicted (to S3-FIFO's ghost list) by another write's admission between its own admission and its
  write was kept with no index row, so the policy never evicted it again (DiskTier.put);
- the open-file cache of the fast path's disk hits (Store._files) kept evicted slice files open until they were
  looked up again, so their blocks stayed allocated; the disk filled (ENOSPC) and went out of service;
- a value file written by a process killed before it committed the file's row was never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.e2e.procs import ROOT, free_port
from tests.origin import Origin

MiB = 2**20
BUDGET = 24 * MiB


@dataclass
class Node:
    port: int
    admin: int
    proc: asyncio.subprocess.Process
    log: Path

    def reloads(self) -> int:
        """Reloads the node finished (server.reload logs each, after it revived what disks it could)."""
        return self.log.read_bytes().count(b"INFO edgecache.server: reloaded ")


@contextlib.asynccontextmanager
async def origin_up() -> AsyncIterator[Origin]:
    origin = Origin()
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


@contextlib.asynccontextmanager
async def edge(tmp_path: Path, origin: Origin, disks: list[Path], slice_size: str = "1MiB") -> AsyncIterator[Node]:
    """A real node (`python -m edgecache serve`) with a 1 MiB memory tier and each of `disks` budgeted BUDGET."""
    port, admin = free_port(), free_port()
    config = tmp_path / "edge.toml"
    listed = ", ".join(f'{{path = "{d}", size = {BUDGET}}}' for d in disks)
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[cache]\nmemory = "1MiB"\nslice = "{slice_size}"\ndisks = [{listed}]\n'
        f'[[sites]]\nname = "v"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecache", "serve", "--config", str(config),
            cwd=ROOT, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while b"admin listening on" not in log.read_bytes():
            assert proc.returncode is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        yield Node(port, admin, proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def get(session: aiohttp.ClientSession, node: Node, path: str) -> tuple[int, bytes]:
    async with session.get(f"http://127.0.0.1:{node.port}{path}", headers={"Host": "video.test"}) as r:
        return r.status, await r.read()


async def metric(session: aiohttp.ClientSession, node: Node, name: str, disk: Path) -> float:
    async with session.get(f"http://127.0.0.1:{node.admin}/metrics") as r:
        text = await r.text()
    (line,) = [x for x in text.splitlines() if x.startswith(f'{name}{{disk="{disk}"}} ')]
    return float(line.rsplit(" ", 1)[1])


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_slice_evicted_before_its_write_lands_is_not_kept_past_the_budget(tmp_path: Path) -> None:
    disk = tmp_path / "d0"
    async with origin_up() as origin:
        paths = [f"/x{i}" for i in range(40)]  # 320 MiB, each asked once: every write evicts another's slice

        def put_all() -> None:  # off the loop: 320 MiB made and hashed stalled it past the watchdog under load
            for n, path in enumerate(paths):
                origin.put(path, bytes([n]) * (8 * MiB))

        await asyncio.to_thread(put_all)
        async with edge(tmp_path, origin, [disk]) as node, aiohttp.ClientSession() as session:
            gate = asyncio.Semaphore(8)

            async def one(path: str) -> tuple[int, bytes]:
                async with gate:
                    return await get(session, node, path)

            answers = await asyncio.gather(*(one(p) for p in paths))
            assert answers == [(200, origin.objects[p].data) for p in paths]
    with contextlib.closing(sqlite3.connect(f"file:{disk}/cache.db?mode=ro", uri=True)) as con:
        (stored,) = con.execute("SELECT coalesce(sum(size), 0) FROM Cache WHERE expire_time IS NULL").fetchone()
        unindexed = con.execute(
            "SELECT key FROM Cache c WHERE expire_time IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM edge_index e WHERE e.key = c.key AND e.queue != 2)"
        ).fetchall()
    assert unindexed == []
    assert stored <= BUDGET


def sh(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, check=True, timeout=30)


@contextlib.contextmanager
def tmpfs(*paths: Path, size: str = "40m") -> Iterator[None]:
    """Each path a tmpfs of its own (a disk), unmounted at the end however often a test mounted it again."""
    try:
        for path in paths:
            path.mkdir(exist_ok=True)
            sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        yield
    finally:
        for path in paths:
            while os.path.ismount(path):
                sh("umount", "-l", str(path))


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


async def test_evicted_slice_files_held_open_do_not_fill_the_disk(tmp_path: Path) -> None:
    """A 64 MiB tmpfs for a 24 MiB disk: room for the budget, the SQLite files and the slices evicted in the second
    before their files are closed (server._close_evicted), not for those held open until looked up again (about
    70 MiB of them by the eighth round)."""
    fs = tmp_path / "fs"
    with tmpfs(fs, size="64m"):
        async with origin_up() as origin, edge(tmp_path, origin, [fs]) as node, aiohttp.ClientSession() as s:
            for generation in range(8):
                paths = [f"/g{generation}o{i}" for i in range(3)]
                for n, path in enumerate(paths):
                    origin.put(path, bytes([generation * 3 + n]) * (4 * MiB))
                for _ in range(2):  # a fill, then a disk hit that opens each slice file (the hit makes it reused)
                    for path in paths:
                        assert await get(s, node, path) == (200, origin.objects[path].data)

                async def within_budget() -> bool:
                    # The budget, the SQLite files (a WAL of 4 MiB at most) and a little slack: not 12 MiB of
                    # slices evicted an instant ago and held open for good.
                    return used(fs) <= BUDGET + 8 * MiB

                await until(within_budget, f"generation {generation}: {used(fs) / MiB:.1f} MiB used")
                assert await metric(s, node, "edgecache_disk_up", fs) == 1, f"generation {generation}: disk full"


async def test_value_files_a_killed_process_left_with_no_row_are_deleted_at_the_next_start(tmp_path: Path) -> None:
    """diskcache writes a value's file, then commits its row: a kill -9 in between left a file no row names,
    outside every budget, for good (11 files, 10 MiB, after 14 kills during fills of 1 MiB slices)."""
    disk = tmp_path / "d0"
    async with origin_up() as origin:
        origin.put("/kept", os.urandom(3 * MiB + 7))
        async with edge(tmp_path, origin, [disk]) as node, aiohttp.ClientSession() as session:
            assert await get(session, node, "/kept") == (200, origin.objects["/kept"].data)
        # What a process killed between the write of a file and the commit of its row leaves (the same naming).
        orphans = [disk / "ab" / "cd" / ("0" * 28 + ".val"), disk / "fe" / "01" / ("1" * 28 + ".val")]
        for orphan in orphans:
            orphan.parent.mkdir(parents=True, exist_ok=True)
            orphan.write_bytes(os.urandom(MiB))
        async with edge(tmp_path, origin, [disk]) as node, aiohttp.ClientSession() as session:

            async def deleted() -> bool:
                return not any(o.exists() for o in orphans)

            await until(deleted, "value files no row names were kept")
            assert await get(session, node, "/kept") == (200, origin.objects["/kept"].data)
        assert origin.hits["/kept"] == 1  # every stored value kept: the second answer came from the disk
    with contextlib.closing(sqlite3.connect(f"file:{disk}/cache.db?mode=ro", uri=True)) as con:
        named = {r[0] for r in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    files = {str(p.relative_to(disk)) for p in disk.rglob("*.val")}
    assert files == named
    assert len(named) == 3  # the object's three full slices (the last, 7 bytes, lives in the database)


async def test_a_reload_never_takes_the_bare_directory_of_an_unmounted_disk_for_the_disk(tmp_path: Path) -> None:
    """A disk whose filesystem was unmounted leaves its mount point, a directory of the parent filesystem that
    takes a file: a reload (for any reason) brought that into service, and the node filled the parent filesystem
    (the root one, often) up to the disk's budget. It comes back once a filesystem is mounted there again."""
    disks = [tmp_path / "d0", tmp_path / "d1"]
    bad = disks[1]
    with tmpfs(*disks):
        async with (
            origin_up() as origin,
            edge(tmp_path, origin, disks, slice_size="256KiB") as node,
            aiohttp.ClientSession() as session,
        ):
            paths = [f"/u{i}" for i in range(12)]
            for n, path in enumerate(paths):
                origin.put(path, bytes([n]) * (MiB + n))
            for path in paths[:6]:
                assert await get(session, node, path) == (200, origin.objects[path].data)
            sh("umount", "-l", str(bad))

            def up_is(value: float) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    return await metric(session, node, "edgecache_disk_up", bad) == value

                return check

            await until(up_is(0), "the unmounted disk was never taken out of service")
            reloads = node.reloads()
            os.kill(node.proc.pid, signal.SIGHUP)  # a reload, say for a new site, while the disk is still unmounted

            async def reloaded() -> bool:
                return node.reloads() > reloads

            await until(reloaded, "the reload never finished")
            assert await metric(session, node, "edgecache_disk_up", bad) == 0
            for path in paths:
                assert await get(session, node, path) == (200, origin.objects[path].data)
            assert list(bad.iterdir()) == []  # nothing cached on the parent filesystem

            sh("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(bad))  # a new disk in its place
            os.kill(node.proc.pid, signal.SIGHUP)
            await until(up_is(1), "the new disk was never taken into service")
            for path in paths[6:]:
                assert await get(session, node, path) == (200, origin.objects[path].data)
            assert (bad / "cache.db").exists()


async def test_writes_in_flight_when_a_disk_is_unmounted_never_land_on_the_parent_filesystem(tmp_path: Path) -> None:
    """Until the probe took an unmounted disk out of service (up to a second), its writes made their files by
    path, under the bare mount point: on the parent filesystem, for good (126 to 143 files, 31 to 36 MiB of
    slices in 2.5 s at this load). Made relative to the directory as opened, they stay on the disk's own."""
    disks = [tmp_path / "d0", tmp_path / "d1"]
    bad = disks[1]
    with tmpfs(*disks, size="100m"):
        async with (
            origin_up() as origin,
            edge(tmp_path, origin, disks, slice_size="256KiB") as node,
            aiohttp.ClientSession() as session,
        ):
            stop = asyncio.Event()
            wrong: list[str] = []
            done = 0

            async def client(k: int) -> None:
                nonlocal done
                n = 0
                while not stop.is_set():
                    n += 1
                    path = f"/w{k}x{n}"
                    origin.put(path, bytes([(k * 31 + n) % 256]) * (2 * MiB))
                    if await get(session, node, path) != (200, origin.objects[path].data):
                        wrong.append(path)
                    done += 1

            def answered(n: int) -> Callable[[], Awaitable[bool]]:
                target = done + n

                async def check() -> bool:
                    return done >= target

                return check

            async def out_of_service() -> bool:
                return await metric(session, node, "edgecache_disk_up", bad) == 0

            clients = [asyncio.create_task(client(k)) for k in range(8)]
            try:
                await until(answered(24), "no fills under way")  # every client's fills writing to both disks
                sh("umount", "-l", str(bad))
                await until(out_of_service, "the unmounted disk was never taken out of service")
                await until(answered(24), "no fills after the disk was taken out")
            finally:
                stop.set()
                await asyncio.gather(*clients)
            assert wrong == []
            assert [p for p in bad.rglob("*") if p.is_file()] == []
