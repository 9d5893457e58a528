"""A real edge on several disks: exact bytes spread over them, and a disk that fails under load (read-only, I/O
errors, unmounted) taken out of service with no wrong byte and no 5xx, while the objects on the other disks keep
their hits; a reload brings the disk back."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from edgecache.config.model import Disk
from edgecache.core.keys import digest, make_key
from edgecache.storage.disks import Placement
from tests.e2e.procs import ROOT, free_port
from tests.origin import Origin

KiB, MiB = 2**10, 2**20
SLICE = 64 * KiB
SIZES = (("d0", 24 * MiB), ("d1", 24 * MiB), ("d2", 48 * MiB))  # the last twice the others: twice the keys


# --- disks: loop-mounted filesystems the test can fail -------------------------------------------------------------

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32): the kernel fails every later I/O of the filesystem (EIO)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


def _run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def _make(disks: list[Disk], root: Path) -> None:
    for d in disks:
        image = root / f"{d.path.name}.img"
        d.path.mkdir(parents=True)
        with image.open("wb") as f:
            f.truncate(64 * MiB)
        assert _run("mkfs.ext4", "-q", "-F", str(image)), f"cannot make a filesystem in {image}"
        assert _run("mount", "-o", "loop", str(image), str(d.path)), f"cannot mount {image}"


def _unmount(paths: list[Path]) -> None:
    for path in paths:
        while _run("umount", "-l", str(path)):  # a read-only bind over it, then the disk itself
            pass


@contextlib.asynccontextmanager
async def loop_disks(root: Path) -> AsyncIterator[list[Disk]]:
    """Three disks, each an ext4 filesystem of its own on a loop device (the test runs as root, as CI does),
    unmounted at the end whatever happened. Not tmpfs: the fast path reads disk hits with RWF_NOWAIT, which
    tmpfs refuses (EOPNOTSUPP)."""
    disks = [Disk(root / name, size) for name, size in SIZES]
    try:
        await asyncio.to_thread(_make, disks, root)
        yield disks
    finally:
        await asyncio.to_thread(_unmount, [d.path for d in disks])


def _fail(disk: Disk, how: str) -> None:
    path = str(disk.path)
    if how == "read-only":
        # A read-only mount of the disk over its directory: every file made there from now on is refused with
        # EROFS (a disk remounted read-only under its writers cannot be had: the kernel says "busy").
        assert _run("mount", "--bind", path, path)
        deadline = time.monotonic() + 30  # a loaded machine's writes keep it busy longer (10 s failed once)
        while time.monotonic() < deadline:  # refused (busy) while a write through the new mount is under way
            if _run("mount", "-o", "remount,bind,ro", path):
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"{path} could not be made read-only")
    elif how == "io-error":
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
    else:  # gone: what the node opened is no longer there (a disk pulled, a mount lost)
        assert _run("umount", "-l", path)


async def fail(disk: Disk, how: str) -> None:
    await asyncio.to_thread(_fail, disk, how)


# --- the edge -------------------------------------------------------------------------------------------------------


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    port: int
    admin: int
    lines: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def metric(self, session: aiohttp.ClientSession, name: str, disk: Disk) -> float:
        async with session.get(f"http://127.0.0.1:{self.admin}/metrics") as r:
            text = await r.text()
        prefix = f'{name}{{disk="{disk.path}"}} '
        values = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
        assert len(values) == 1, f"{prefix}: {values}"
        return values[0]

    async def until(self, session: aiohttp.ClientSession, name: str, disk: Disk, value: float) -> None:
        """Polls the metric until it has `value` (the node's own probe runs each second), 20 s at most."""
        deadline = time.monotonic() + 20
        while await self.metric(session, name, disk) != value:
            assert time.monotonic() < deadline, f"{name} of {disk.path} never became {value}"
            await asyncio.sleep(0.1)

    def logged(self, needle: bytes) -> int:
        return sum(needle in line for line in self.lines)

    async def wait_logged(self, needle: bytes) -> None:
        deadline = time.monotonic() + 20
        while not self.logged(needle):
            assert time.monotonic() < deadline, f"no {needle!r} in the log"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def edge(tmp_path: Path, origin: Origin, disks: list[Disk], workers: int = 1) -> AsyncIterator[Running]:
    port, admin = free_port(), free_port()
    listed = ", ".join(f'{{path = "{d.path}", size = {d.size}}}' for d in disks)
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[cache]\nmemory = "1MiB"\nslice = "{SLICE}"\ndisks = [{listed}]\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecache", "serve", "--config", str(config), cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    running = Running(proc, port, admin)

    async def drain() -> None:  # every log line kept, and the pipe never fills under a failing disk's warnings
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            running.lines.append(line)

    reader = asyncio.create_task(drain())
    try:
        await running.wait_logged(b"admin listening on")
        yield running
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(reader, 10)
        (tmp_path / "edge.log").write_bytes(b"".join(running.lines))  # kept for a failure's post-mortem
    assert rc == 0, b"".join(running.lines[-30:]).decode(errors="replace")


# --- objects and where they live ------------------------------------------------------------------------------------


def content(n: int, size: int) -> bytes:
    return random.Random(n).randbytes(size)


def keys_on(disk: Disk) -> list[str]:
    """What the disk's database holds, read as it is (never through the node)."""
    with contextlib.closing(sqlite3.connect(f"file:{disk.path}/cache.db?mode=ro", uri=True)) as db:
        return [str(k) for (k,) in db.execute("SELECT key FROM Cache")]


async def settled(disks: list[Disk], paths: list[str], slices: list[int]) -> dict[int, list[str]]:
    """Each disk's keys once every object's metadata and all its slices (`slices`: how many each has) are written
    (a fill answers before its disk writes end; waiting for one slice of each let a test count 70 of 71 in one
    run), 30 s at most: writes to loop-mounted disks on a loaded machine took over 10 s in one run."""
    deadline = time.monotonic() + 30
    while True:
        stored = await asyncio.to_thread(lambda: {n: keys_on(d) for n, d in enumerate(disks)})
        keys = {k for listed in stored.values() for k in listed}
        digests = [_d(p) for p in paths]
        if all(
            f"m:{d}" in keys and sum(k.startswith(f"s:{d}:") for k in keys) >= n
            for d, n in zip(digests, slices, strict=True)
        ):
            return stored
        assert time.monotonic() < deadline, "objects not on disk after 30 s"
        await asyncio.sleep(0.05)


def homes(path: str, disks: list[Disk], stored: dict[int, list[str]]) -> set[int]:
    """The disks an object's values live on: its primary record, its metadata and every slice stored for it."""
    place = Placement(disks)
    d = digest(make_key("videos", "video.test", path, ("*",)).primary)
    slices = [k for keys in stored.values() for k in keys if k.startswith(f"s:{d}:")]
    assert slices, f"no slice of {path} on any disk"
    assert any(f"m:{d}" in keys for keys in stored.values()), f"no metadata of {path} on any disk"
    return {place.home(k) for k in (f"v:{d}", f"m:{d}", *slices)}


@dataclass
class Load:
    """Clients asking for whole objects and ranges of them, checking every byte of every answer."""

    url: str
    origin: Origin
    paths: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    done: int = 0

    async def client(self, seed: int, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            path = rnd.choice(self.paths)
            data = self.origin.objects[path].data
            headers = {"Host": "video.test"}
            if rnd.random() < 0.5:
                start = rnd.randrange(len(data))
                end = min(len(data) - 1, start + rnd.randrange(1, 3 * SLICE))
                headers["Range"] = f"bytes={start}-{end}"
                want, status = data[start : end + 1], 206
            else:
                want, status = data, 200
            async with session.get(self.url + path, headers=headers) as r:
                body = await r.read()
                self.statuses[r.status] += 1
                if r.status != status or body != want:
                    self.wrong.append(f"{path} {headers.get('Range')}: {r.status}, {len(body)} bytes")
            self.done += 1

    async def until_done(self, n: int, clients: asyncio.Task[None]) -> None:
        """Until the clients have made `n` requests in all (20 s at most)."""
        deadline = time.monotonic() + 20
        while self.done < n:
            assert not clients.done(), clients
            assert time.monotonic() < deadline, f"{self.done} requests made, not {n}: {self.statuses}"
            await asyncio.sleep(0.02)

    async def run_until(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await asyncio.gather(*(self.client(seed, session, stop) for seed in range(4)))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url, headers={"Host": "video.test"}) as r:
        return r.status, await r.read()


# --- tests ----------------------------------------------------------------------------------------------------------


async def test_three_disks_serve_exact_bytes(origin: Origin, tmp_path: Path) -> None:
    disks = [Disk(tmp_path / name, size) for name, size in SIZES]
    paths = [f"/v/{n}" for n in range(24)]
    for n, path in enumerate(paths):
        origin.put(path, content(n, SLICE * 2 + n * 1000))  # 3 slices each: one origin request fills them
    async with edge(tmp_path, origin, disks) as running, aiohttp.ClientSession() as session:
        for _ in range(2):
            for path in paths:
                assert await get(session, running.url + path) == (200, origin.objects[path].data)
        assert all(origin.hits[p] == 1 for p in paths), origin.hits
        stored = await settled(disks, paths, [-(-len(origin.objects[p].data) // SLICE) for p in paths])
    place = Placement(disks)
    for n, keys in stored.items():
        assert [k for k in keys if k.startswith("s:") and place.home(k) != n] == []  # each on its own home
    slices = Counter(n for n, keys in stored.items() for k in keys if k.startswith("s:"))
    assert sum(slices.values()) == sum(-(-len(origin.objects[p].data) // SLICE) for p in paths)
    # On every disk (slice names carry a random token per copy, so how many each holds varies from run to run;
    # the share by size is tests/storage/test_disks.py's, on fixed keys).
    assert min(slices[n] for n in range(3)) >= 1, slices
    assert any(len(homes(p, disks, stored)) == 3 for p in paths)  # an object's values spread over the disks


@pytest.mark.parametrize(("how", "workers"), [("read-only", 1), ("io-error", 1), ("gone", 1), ("io-error", 2)])
async def test_a_disk_failing_under_load(origin: Origin, tmp_path: Path, how: str, workers: int) -> None:
    warm = [f"/v/w{n}" for n in range(60)]
    for n, path in enumerate(warm):
        origin.put(path, content(n, SLICE // 2 + n * 97))  # one slice: three values (record, metadata, slice)
    async with loop_disks(tmp_path / "disks") as disks:
        bad = disks[1]
        async with edge(tmp_path, origin, disks, workers) as running, aiohttp.ClientSession() as session:
            for path in warm:
                assert await get(session, running.url + path) == (200, origin.objects[path].data)
            stored = await settled(disks, warm, [1] * len(warm))
            healthy = [p for p in warm if 1 not in homes(p, disks, stored)]
            on_bad = [p for p in warm if p not in healthy]
            # Both kinds, whatever the disks' paths (about 25 and 35: the tmp paths and the slices' tokens place them).
            assert len(healthy) >= 5, (len(healthy), len(on_bad))
            assert len(on_bad) >= 5, (len(healthy), len(on_bad))
            for n in range(40):  # cold objects: fills write to every disk, the failing one too
                origin.put(f"/v/c{n}", content(1000 + n, 2 * SLICE + n * 131))
            load = Load(running.url, origin, [*warm, *(f"/v/c{n}" for n in range(40))])
            stop = asyncio.Event()
            clients = asyncio.create_task(load.run_until(stop))
            try:
                await load.until_done(200, clients)
                await fail(bad, how)
                await running.until(session, "edgecache_disk_up", bad, 0)
                await load.until_done(load.done + 400, clients)
            finally:
                stop.set()
                await clients
            assert load.wrong == []
            assert set(load.statuses) <= {200, 206}, load.statuses
            await running.until(session, "edgecache_disk_failures_total", bad, workers)  # each saw it, once
            for other in (disks[0], disks[2]):
                assert await running.metric(session, "edgecache_disk_failures_total", other) == 0
                assert await running.metric(session, "edgecache_disk_up", other) == 1
            assert running.logged(f"disk {bad.path} failed and is out of service".encode()) == workers
            # The objects on the other disks kept their hits; those on the failed one are served from origin.
            for _ in range(2):
                for path in warm:
                    assert await get(session, running.url + path) == (200, origin.objects[path].data)
            assert {p: origin.hits[p] for p in healthy} == dict.fromkeys(healthy, 1)
            assert sum(origin.hits[p] for p in on_bad) > len(on_bad)


async def test_a_reload_brings_a_failed_disk_back(origin: Origin, tmp_path: Path) -> None:
    async with loop_disks(tmp_path / "disks") as disks:
        bad = disks[1]
        place = Placement(disks)
        async with edge(tmp_path, origin, disks) as running, aiohttp.ClientSession() as session:
            await fail(bad, "read-only")
            await running.until(session, "edgecache_disk_up", bad, 0)
            running.proc.send_signal(signal.SIGHUP)  # still read-only: it stays out
            await running.wait_logged(f"disk {bad.path} is still out of service".encode())
            assert await running.metric(session, "edgecache_disk_up", bad) == 0
            # The read-only mount over it goes (lazily: a path lookup in flight may hold it a moment).
            assert await asyncio.to_thread(_run, "umount", "-l", str(bad.path))
            running.proc.send_signal(signal.SIGHUP)
            await running.until(session, "edgecache_disk_up", bad, 1)
            assert running.logged(f"disk {bad.path} is back in service".encode()) == 1
            # An object whose metadata lives on it is stored there again.
            path = next(f"/v/r{n}" for n in range(100) if place.home("m:" + _d(f"/v/r{n}")) == 1)
            origin.put(path, content(7, SLICE + 5))
            assert await get(session, running.url + path) == (200, origin.objects[path].data)
            assert "m:" + _d(path) in keys_on(bad)
            assert await running.metric(session, "edgecache_disk_failures_total", bad) == 1


def _d(path: str) -> str:
    return digest(make_key("videos", "video.test", path, ("*",)).primary)
