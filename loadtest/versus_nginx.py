"""Origin bytes against nginx: one seeded player-like trace through a real edgecache node and through nginx.

    python -m loadtest.versus_nginx [--seed 1] [--content 3GiB] [--disk 1GiB] [--memory 256MiB] [--served 6GiB]
                                    [--concurrency 8] [--quick] [--keep] [--json FILE] [--edge-arg ARG ...]
                                    [--tiers inclusive|exclusive]

What an edge saves an ISP is origin traffic, so the figure is origin bytes / client bytes (1 - byte hit ratio) for
each system on the same trace, and edgecache's origin bytes / nginx's (below 1: edgecache fetched less).

- The origin is this module (`python -m loadtest.versus_nginx origin`, its own process on 127.0.0.1): it stores
  nothing, it derives every byte from (object, offset) (see content()), serves any single range, and counts the
  body bytes it writes. Both systems run in front of the same origin process, one after the other, each with an
  empty cache; an object's ETag and Last-Modified never change, and it may be cached for a day.
- The trace is loadtest/efficiency.py's: objects sized like its object_sizes (clips, episodes, films) drawn until
  --content is reached, Zipf 0.9 popularity over them, sessions that start at 0 (most) or a seek and play on in
  2 MiB ranges with seeks and abandons, 5% prefetching the first 4 MiB of a popular object; whole sessions until
  --served bytes. Sessions start in trace order, --concurrency at a time, each playing its ranges in order.
- edgecache: `edgecache serve --origin` (one-origin mode), 1 MiB slices, --memory for its memory tier (its RSS
  bound off, so the tier keeps all of it), --disk, --tiers (cache.tiers, the node's default: inclusive); --edge-arg
  adds or overrides arguments of `edgecache serve`.
- nginx: `proxy_cache` + `slice 1m`, the cache key `$uri$is_args$args$slice_range`, `proxy_cache_valid 200 206`,
  `max_size` = --disk, and `proxy_cache_lock` so that, as in edgecache, readers of a slice being filled wait for
  it rather than fetching it again.
- Memory: the budget is the RAM for cached bytes. edgecache's is its memory tier. nginx has no memory tier: its RAM
  is the kernel's page cache, which holds copies of files already in its disk cache, so RAM changes how fast nginx
  serves, never what it fetches, and it is not limited here. edgecache's memory tier may keep a slice its disk has
  dropped, so its two tiers may hold up to --disk + --memory distinct bytes; nginx holds --disk.
- Disk: a budget is the bytes a cache keeps. nginx's cache manager trims to max_size only when it wakes, at most
  every 10 s, so no request starts while a cache is over its budget (plus room for the fills in flight) and
  nginx trims meanwhile (see DiskWatch; --no-hold to see nginx unheld). The peak and final size on disk of each
  cache are reported, and how long play was held for each.
- Every response's status, Content-Range and bytes are checked against the derived content; any mismatch or error
  is printed and the exit code is 1. Everything runs on 127.0.0.1; every process is stopped at the end (process
  groups) and the work directory is removed unless --keep.

--quick is a smoke check of under a minute (256 MiB of content, 48 MiB disk, 16 MiB memory, 512 MiB served);
any scale flag given overrides it. --json FILE writes the figures for scripts (tests/e2e/test_versus_nginx.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edgecache.config.model import CacheSettings
from edgecache.config.values import parse_size
from loadtest.efficiency import SLICE, object_sizes, plays

MiB = 2**20
GiB = 2**30
DEFAULTS = {"content": "3GiB", "disk": "1GiB", "memory": "256MiB", "served": "6GiB"}
NODE_TIERS = next(f.default for f in fields(CacheSettings) if f.name == "tiers")  # the node's default cache.tiers
QUICK = {"content": "256MiB", "disk": "48MiB", "memory": "16MiB", "served": "512MiB"}
# The content is a seeded pool of PERIOD bytes repeated, each object starting at its own phase. PERIOD is not a
# multiple of the slice, so a slice served from another offset differs, and objects' phases differ.
PERIOD = 2**20 + 4093
STRIDE = 65537
_POOL = random.Random(0x5EED).randbytes(PERIOD)
_TWICE = _POOL + _POOL
CHUNK = 256 * 1024
SAMPLE_SECONDS = 0.5
HOLD_LIMIT = 30.0  # seconds; nginx's cache manager wakes at least every 10 s
LAST_MODIFIED = "Sat, 01 Nov 2025 00:00:00 GMT"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_PATH = re.compile(r"/video/(\d{1,9})\.mp4")


def content(obj: int, first: int, length: int) -> bytes:
    """Bytes [first, first + length) of object `obj`: what the origin sends and what every response must hold."""
    start = (obj * STRIDE + first) % PERIOD
    if length <= PERIOD:
        return _TWICE[start : start + length]
    turn = _TWICE[start : start + PERIOD]
    whole, rest = divmod(length, PERIOD)
    return turn * whole + turn[:rest]


# --- the trace ---


@dataclass(frozen=True)
class Request:
    obj: int
    first: int
    last: int  # inclusive, within the object

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass
class Trace:
    sizes: list[int]
    sessions: list[list[Request]]

    def requests(self) -> list[Request]:
        return [r for s in self.sessions for r in s]

    def summary(self) -> dict[str, int]:
        """Counts a run must match (requests, client bytes) and bounds its origin bytes must fall within."""
        reqs = self.requests()
        touched: set[tuple[int, int]] = set()
        covering = 0
        for r in reqs:
            for index in range(r.first // SLICE, r.last // SLICE + 1):
                touched.add((r.obj, index))
                covering += self.slice_len(r.obj, index)
        return {
            "objects": len(self.sizes),
            "content_bytes": sum(self.sizes),
            "sessions": len(self.sessions),
            "requests": len(reqs),
            "client_bytes": sum(r.length for r in reqs),
            # Each distinct slice once: what a cache that never evicts fetches. No cache can fetch less.
            "distinct_slice_bytes": sum(self.slice_len(o, i) for o, i in touched),
            # Every request's slices fetched anew: what a cache that keeps nothing fetches.
            "covering_slice_bytes": covering,
        }

    def slice_len(self, obj: int, index: int) -> int:
        return min(SLICE, self.sizes[obj] - index * SLICE)


def catalogue(rnd: random.Random, content_bytes: int) -> list[int]:
    """Object sizes drawn like efficiency.object_sizes until `content_bytes`; one that would overflow is skipped."""
    sizes: list[int] = []
    total = 0
    for _ in range(100_000):
        if content_bytes - total < 2 * SLICE:  # the smallest object drawn is 1 MiB + up to a slice
            break
        size = object_sizes(rnd, 1)[0]
        if total + size <= content_bytes:
            sizes.append(size)
            total += size
    if not sizes:
        raise SystemExit(f"--content {content_bytes} holds no object: give at least 2 MiB")
    return sizes


def make_trace(seed: int, content_bytes: int, served: int) -> Trace:
    rnd = random.Random(seed)
    sizes = catalogue(rnd, content_bytes)
    sessions: list[list[Request]] = []
    total = 0
    for play in plays(rnd, sizes, sessions=2**62):
        if total >= served:
            break
        session = [Request(o, pos, min(sizes[o], pos + length) - 1) for o, pos, length in play]
        sessions.append(session)
        total += sum(r.length for r in session)
    return Trace(sizes, sessions)


# --- the origin (its own process) ---


@dataclass
class OriginCounts:
    requests: int = 0
    bytes: int = 0
    full: int = 0  # GETs without a Range
    bad: int = 0  # 404 or 416: the trace never asks for these


def origin_app(sizes: list[int]) -> web.Application:
    counts = OriginCounts()

    async def counted(_: web.Request) -> web.Response:
        return web.json_response(asdict(counts))

    async def video(request: web.Request) -> web.StreamResponse:
        counts.requests += 1
        m = _PATH.fullmatch(request.path)
        if m is None or int(m.group(1)) >= len(sizes):
            counts.bad += 1
            return web.Response(status=404, text="no such object\n")
        obj = int(m.group(1))
        size = sizes[obj]
        headers = {
            "Content-Type": "video/mp4",
            "Cache-Control": "public, max-age=86400",
            "ETag": f'"{obj}-{size}"',
            "Last-Modified": LAST_MODIFIED,
            "Accept-Ranges": "bytes",
        }
        span = _one_range(request.headers.get("Range"), size)
        if isinstance(span, str):  # "unsatisfiable"
            counts.bad += 1
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        status, (first, last) = (200, (0, size - 1)) if span is None else (206, span)
        if span is None:
            counts.full += 1
        else:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = last - first + 1
        await resp.prepare(request)
        if request.method == "GET":
            for pos in range(first, last + 1, CHUNK):
                n = min(CHUNK, last + 1 - pos)
                await resp.write(content(obj, pos, n))
                counts.bytes += n  # written: a cache that hangs up mid-body is counted for what it got
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/__counts", counted)
    app.router.add_get("/video/{name}", video)
    return app


def _one_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single byte range resolved against `size`; None to send the whole object (no or another form)."""
    m = _RANGE.fullmatch(header or "")
    if m is None or not (m.group(1) or m.group(2)):
        return None
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if first > last:
            return "unsatisfiable" if first >= size else None
        return first, last
    suffix = int(m.group(2))
    return "unsatisfiable" if suffix == 0 else (max(0, size - suffix), size - 1)


def origin_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.versus_nginx origin")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sizes", type=Path, required=True, help="JSON list of object sizes")
    args = ap.parse_args(argv)
    sizes = json.loads(args.sizes.read_text())
    web.run_app(origin_app(sizes), host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


# --- processes ---


def free_port() -> int:
    """A port below the kernel's ephemeral range, so no outgoing connection takes it before the server binds; within
    EDGECACHE_TEST_PORTS=LO-HI when set (as tests/e2e/procs.free_port), so runs sharing a machine keep apart."""
    try:
        floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        floor = 32768
    lo, hi = max(1024, floor - 12_000), floor
    if given := os.environ.get("EDGECACHE_TEST_PORTS"):
        first, _, last = given.partition("-")
        lo, hi = int(first), int(last) + 1
    for _ in range(200):
        port = random.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class Proc:
    """A process in its own process group, its output in a log file; stop() ends the whole group."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_port(self, port: int, seconds: float = 60) -> None:
        """Until `port` accepts a connection; fails with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + seconds
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} is not listening on {port} after {seconds:.0f} s:\n{self.tail()}")
            time.sleep(0.05)  # readiness poll of a process we cannot ask otherwise (nginx says nothing)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError):  # workers or cache managers left behind
            os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


NGINX_CONF = """{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    proxy_cache_path {work}/cache levels=1:2 keys_zone=versus:32m max_size={disk} inactive=7d use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            slice 1m;
            proxy_cache versus;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 7d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 120s;
            proxy_cache_lock_age 120s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://origin;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """nginx on PATH, or in sbin, which a user's PATH may lack (Debian installs it as /usr/sbin/nginx)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/local/sbin:/usr/sbin")


def start_nginx(work: Path, port: int, origin: int, disk: int) -> Proc:
    (work / "tmp").mkdir()
    # nginx's master as root runs its workers as nobody, who could not write a private temp directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, work=work, disk=disk, origin=origin, port=port))
    argv = [nginx_binary() or "nginx", "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)]
    return Proc("nginx", argv, work / "nginx.log")


def start_edge(work: Path, port: int, admin: int, origin: int, args: argparse.Namespace) -> Proc:
    argv = [
        *(sys.executable, "-m", "edgecache", "serve", "--origin", f"http://127.0.0.1:{origin}"),
        *("--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--cache-dir", str(work / "cache")),
        *("--memory", str(args.memory), "--disk", str(args.disk), "--slice", str(SLICE)),
        # The RSS bound off: the tier keeps its whole --memory (with the bound, the first default run's tier had
        # shrunk to 219 of its 256 MiB). --edge-arg=--memory-headroom=64MiB puts it back.
        *("--memory-headroom", "0"),
        *("--tiers", args.tiers),
        *args.edge_arg,
    ]
    return Proc("edgecache", argv, work / "edge.log")


# --- the replay ---


@dataclass
class Tally:
    requests: int = 0
    client_bytes: int = 0
    failures: list[str] = field(default_factory=list)
    disk_samples: list[int] = field(default_factory=list)  # the cache directory's size, every SAMPLE_SECONDS
    holds: int = 0
    held_seconds: float = 0.0
    hold_timeouts: int = 0


class DiskWatch:
    """Samples the cache's size on disk through the run, and holds the players while it is over `limit`.

    nginx's cache manager enforces max_size only when it wakes, at most every 10 s (ngx_http_file_cache_expire
    caps its sleep at 10 s), and nginx keeps every fill in between: the first run at default scale, unheld, held
    up to 1,185 MiB under a max_size of 1,024 and ended at 1,222 MiB, nearly all of the trace's 1.24 GiB of
    distinct slices. A budget is the bytes a cache keeps, so no request starts while a cache is over its limit
    (the budget and a slack for the fills in flight); nginx's manager trims it and play resumes. A cache that
    stays over for HOLD_LIMIT is let go (counted) until it is within its limit again, so a replay always ends.
    """

    def __init__(self, path: Path, limit: int | None, tally: Tally) -> None:
        self.path, self.limit, self.tally = path, limit, tally
        self.open = asyncio.Event()
        self.open.set()
        self._held_since: float | None = None
        self._excused = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            used = await loop.run_in_executor(None, disk_used, self.path)
            self.tally.disk_samples.append(used)
            self.judge(used, loop.time())
            await asyncio.sleep(SAMPLE_SECONDS)

    def judge(self, used: int, now: float) -> None:
        """One sample: hold play when the cache goes over its limit, resume when it is back within it."""
        over = self.limit is not None and used > self.limit
        self._excused = self._excused and over
        if over and not self._excused and self._held_since is None:
            self._held_since = now
            self.tally.holds += 1
            self.open.clear()
        elif self._held_since is not None and (not over or now - self._held_since > HOLD_LIMIT):
            self._excused = over
            self.tally.hold_timeouts += over
            self.release(now)

    def release(self, now: float) -> None:
        if self._held_since is not None:
            self.tally.held_seconds += now - self._held_since
            self._held_since = None
        self.open.set()


async def replay(port: int, trace: Trace, concurrency: int, cache_dir: Path, limit: int | None = None) -> Tally:
    """Every session of the trace against 127.0.0.1:port, `concurrency` at a time, in trace order; no request
    starts while the cache at `cache_dir` is over `limit` bytes (see DiskWatch)."""
    tally = Tally()
    watch = DiskWatch(cache_dir, limit, tally)
    watcher = asyncio.create_task(watch.run())
    todo = iter(trace.sessions)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as http:

        async def player() -> None:
            for session in todo:  # one shared iterator: the next free player takes the next session
                for r in session:
                    await watch.open.wait()
                    await fetch(http, port, trace.sizes[r.obj], r, tally)

        await asyncio.gather(*(player() for _ in range(concurrency)))
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    watch.release(asyncio.get_running_loop().time())
    return tally


async def fetch(http: aiohttp.ClientSession, port: int, size: int, r: Request, tally: Tally) -> None:
    url = f"http://127.0.0.1:{port}/video/{r.obj}.mp4"
    what = f"/video/{r.obj}.mp4 bytes={r.first}-{r.last}"
    try:
        async with http.get(url, headers={"Range": f"bytes={r.first}-{r.last}"}) as resp:
            body = await resp.read()
            status, got_range = resp.status, resp.headers.get("Content-Range")
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return
    tally.requests += 1
    tally.client_bytes += len(body)
    whole = r.first == 0 and r.last == size - 1
    if not (status == 206 and got_range == f"bytes {r.first}-{r.last}/{size}") and not (whole and status == 200):
        tally.failures.append(f"{what}: status {status}, Content-Range {got_range}")
    elif body != content(r.obj, r.first, r.length):
        tally.failures.append(f"{what}: MISMATCH: {len(body)} bytes that are not the origin's")


# --- one system, then both ---


def origin_counts(port: int) -> OriginCounts:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__counts", timeout=10) as r:
        return OriginCounts(**json.loads(r.read()))


SPILLS = ("written", "dropped", "stale")  # edgecache_tier_spills_total's outcomes (exclusive tiers)


def edge_tiers(admin: int) -> dict[str, float]:
    """The edge's tier gauges from its admin /metrics, as last sampled (every few seconds; absent names are left
    out). The memory tier's limit shows whether the RSS bound had shrunk the tier below --memory."""
    wanted: tuple[str, ...] = ("edgecache_memory_tier_bytes", "edgecache_memory_tier_limit_bytes")
    wanted += ("edgecache_disk_tier_bytes", *(f'edgecache_tier_spills_total{{outcome="{o}"}}' for o in SPILLS))
    got: dict[str, float] = {}
    url = f"http://127.0.0.1:{admin}/metrics"
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                got[name] = float(value)
    return got


def disk_used(path: Path) -> int:
    """Bytes of disk blocks the files under `path` take; a file that goes while it counts is skipped."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def run_system(name: str, work: Path, origin_port: int, trace: Trace, args: argparse.Namespace) -> dict[str, Any]:
    """One system from an empty cache: start it, replay the trace, stop it, then read what the origin sent it."""
    work.mkdir()
    port = free_port()
    admin = free_port()
    proc = (
        start_edge(work, port, admin, origin_port, args)
        if name == "edgecache"
        else start_nginx(work, port, origin_port, args.disk)
    )
    before = origin_counts(origin_port)
    started = time.monotonic()
    try:
        proc.wait_port(port)
        tally = asyncio.run(replay(port, trace, args.concurrency, work / "cache", disk_limit(args)))
        extra = edge_tiers(admin) if name == "edgecache" else {}
    finally:
        proc.stop()  # before the origin's counts: whatever the system still had in flight is counted
    seconds = time.monotonic() - started
    after = origin_counts(origin_port)
    origin_bytes = after.bytes - before.bytes
    return {
        "requests": tally.requests,
        "client_bytes": tally.client_bytes,
        "origin_bytes": origin_bytes,
        "origin_requests": after.requests - before.requests,
        "origin_full_gets": after.full - before.full,
        "origin_bad": after.bad - before.bad,
        "origin_per_client": origin_bytes / max(1, tally.client_bytes),
        "byte_hit_ratio": 1 - origin_bytes / max(1, tally.client_bytes),
        "disk_peak_bytes": max(tally.disk_samples, default=0),
        "disk_end_bytes": disk_used(work / "cache"),
        "seconds": seconds,
        "holds": tally.holds,
        "held_seconds": tally.held_seconds,
        "hold_timeouts": tally.hold_timeouts,
        "failures": tally.failures,
        **extra,
    }


def disk_limit(args: argparse.Namespace) -> int | None:
    """The most a cache may hold on disk before play holds: its budget, and room for the fills in flight."""
    return None if args.no_hold else args.disk + max(args.disk // 50, args.concurrency * SLICE)


def scale(args: argparse.Namespace) -> None:
    preset = QUICK if args.quick else DEFAULTS
    for key, default in preset.items():
        given = getattr(args, key)
        try:
            setattr(args, key, parse_size(default if given is None else given))
        except ValueError as exc:
            raise SystemExit(f"--{key}: {exc}") from exc


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.versus_nginx", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--content", help=f"bytes of objects (default {DEFAULTS['content']})")
    ap.add_argument("--disk", help=f"disk budget of each system (default {DEFAULTS['disk']})")
    ap.add_argument("--memory", help=f"edgecache's memory tier (default {DEFAULTS['memory']})")
    ap.add_argument("--served", help=f"client bytes to replay, in whole sessions (default {DEFAULTS['served']})")
    ap.add_argument("--concurrency", type=int, default=8, help="sessions played at once")
    ap.add_argument("--quick", action="store_true", help="smoke-check scale: " + ", ".join(QUICK.values()))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (caches, configs, logs)")
    ap.add_argument(
        "--no-hold", action="store_true", help="let play go on while a cache is over its disk budget (see DiskWatch)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--edge-arg", action="append", default=[], help="one more argument for `edgecache serve`")
    ap.add_argument(
        "--tiers",
        choices=("inclusive", "exclusive"),
        default=NODE_TIERS,
        help=f"edgecache's cache.tiers (default {NODE_TIERS}, the node's)",
    )
    args = ap.parse_args(argv)
    if args.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    scale(args)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["origin"]:
        return origin_main(argv[1:])
    args = parse_args(argv)
    if nginx_binary() is None:
        print("versus_nginx: needs nginx (apt-get install nginx, or scripts/provision)", file=sys.stderr)
        return 2
    trace = make_trace(args.seed, args.content, args.served)
    summary = trace.summary()
    print(header(args, summary), flush=True)
    work = Path(tempfile.mkdtemp(prefix="versus-nginx-"))
    work.chmod(0o755)
    results: dict[str, dict[str, Any]] = {}
    origin: Proc | None = None
    try:
        (work / "sizes.json").write_text(json.dumps(trace.sizes))
        oport = free_port()
        here = [sys.executable, "-m", "loadtest.versus_nginx", "origin"]
        origin = Proc("origin", [*here, "--port", str(oport), "--sizes", str(work / "sizes.json")], work / "origin.log")
        origin.wait_port(oport)
        for name in ("edgecache", "nginx"):
            print(f"replaying through {name}...", flush=True)
            results[name] = run_system(name, work / name, oport, trace, args)
    finally:
        if origin is not None:
            origin.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report(args, summary, results)


def header(args: argparse.Namespace, s: dict[str, int]) -> str:
    return "\n".join(
        [
            f"seed {args.seed}: {s['objects']} objects, {s['content_bytes'] / GiB:.2f} GiB (Zipf 0.9 popularity)",
            f"trace: {s['sessions']:,} sessions, {s['requests']:,} ranges of up to 2 MiB, "
            f"{s['client_bytes'] / GiB:.2f} GiB to serve, {args.concurrency} sessions at once",
            f"  distinct 1 MiB slices: {s['distinct_slice_bytes'] / GiB:.2f} GiB (what a cache that never evicts "
            f"fetches); every request's slices: {s['covering_slice_bytes'] / GiB:.2f} GiB (a cache that keeps nothing)",
            f"budgets: disk {args.disk / MiB:,.0f} MiB for each (nginx max_size, edgecache --disk); memory "
            f"{args.memory / MiB:,.0f} MiB: edgecache's memory tier ({args.tiers} tiers). nginx's RAM is the page "
            "cache, which only copies files in its disk cache: it speeds nginx, it never saves origin bytes, so it is "
            "not limited.",
        ]
    )


def report(args: argparse.Namespace, summary: dict[str, int], results: dict[str, dict[str, Any]]) -> int:
    print()
    print(
        "| system | client GiB | origin GiB | origin requests | origin / client | byte hit ratio "
        "| cache on disk: peak / end MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['client_bytes'] / GiB:.3f} | {r['origin_bytes'] / GiB:.3f} | {r['origin_requests']:,} "
            f"| {r['origin_per_client']:.3f} | {r['byte_hit_ratio']:.1%} "
            f"| {r['disk_peak_bytes'] / MiB:,.0f} / {r['disk_end_bytes'] / MiB:,.0f} |"
        )
    edge, nginx = results["edgecache"], results["nginx"]
    ratio = edge["origin_bytes"] / max(1, nginx["origin_bytes"])
    than = "as many" if ratio == 1 else f"{abs(ratio - 1):.1%} {'more' if ratio > 1 else 'fewer'}"
    print(f"\nedgecache / nginx origin bytes: {ratio:.3f} (edgecache fetched {than} bytes from the origin)")
    tiers = {
        k.removeprefix("edgecache_"): f"{v:,.0f}" if "spills" in k else f"{v / MiB:,.0f} MiB"
        for k, v in edge.items()
        if k.startswith("edgecache_")
    }
    if tiers:
        print(
            "edgecache's gauges as last sampled (every few seconds; a short run may show none): "
            + ", ".join(f"{k} {v}" for k, v in tiers.items())
        )
    print(
        "seconds (not a benchmark): "
        + ", ".join(f"{name} {r['seconds']:.0f}" for name, r in results.items())
        + f"; origin GETs without a Range: {edge['origin_full_gets']} / {nginx['origin_full_gets']}"
    )
    limit = disk_limit(args)
    if limit is not None:
        held = ", ".join(
            f"{name} {r['holds']} times, {r['held_seconds']:.0f} s ({r['hold_timeouts']} let go at {HOLD_LIMIT:.0f} s)"
            for name, r in results.items()
        )
        print(f"play held while a cache was over {limit / MiB:,.0f} MiB on disk (its budget + fills in flight): {held}")
    failures = [f"{name}: {f}" for name, r in results.items() for f in r["failures"]]
    failures += [
        f"{name}: the origin answered {r['origin_bad']} requests 404/416"
        for name, r in results.items()
        if r["origin_bad"]
    ]
    failures += [
        f"{name}: served {r['client_bytes']:,} bytes in {r['requests']:,} responses; the trace is "
        f"{summary['client_bytes']:,} in {summary['requests']:,}"
        for name, r in results.items()
        if (r["client_bytes"], r["requests"]) != (summary["client_bytes"], summary["requests"])
    ]
    if args.json:
        args.json.write_text(json.dumps({"trace": summary, "systems": results, "ratio": ratio}, indent=1))
    if failures:
        print(f"\n!!! {len(failures)} FAILURES: wrong bytes, statuses or counts (first 20):", file=sys.stderr)
        for line in failures[:20]:
            print(f"!!! {line}", file=sys.stderr)
        return 1
    print(f"byte checks: {summary['requests'] * len(results):,} responses, every byte as the origin's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
