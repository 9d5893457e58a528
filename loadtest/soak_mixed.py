"""A long mixed-traffic soak: does a node's memory, descriptors or disk creep under hours of varied load?

    nice -n 10 python -m loadtest.soak_mixed --minutes 10 --workers 1 --port 20410 --out /tmp/soak

A real node process (`python -m edgecache serve`, 256 MiB memory tier, 512 MiB disk so eviction runs, a rate limit
per client address; exclusive tiers with one worker, inclusive with more) in front of a local aiohttp origin
process of many objects: `/v/ID` (0 B to 40 MiB, ETag and Last-Modified, Range honoured, a new version every few
minutes), `/nv/ID` (no validator, Range ignored), `/vary/ID` (Vary: Accept-Encoding),
`/ns/ID` (no-store), `/t/BUCKET/ID` (the long tail: small objects, a new ID nearly every time), `/e404`, `/e500`,
`/slow` (the head after a second or two, then a trickle) and `/cut` (a body cut short). Clients send GETs (ranges,
multi-ranges, query strings that make new keys), HEADs, requests as many client addresses (X-Forwarded-For from a
trusted loopback), abrupt resets mid-body, URL and prefix purges and prefetch jobs through the admin API.

Every `--every` seconds it appends to OUT/samples.csv each process's VmRSS, open descriptors and threads, the
cache directory's bytes and files, and the node's /metrics gauges; OUT/summary.txt has the answers by status and
each process's RSS and descriptors over the run's second half. Figures: loadtest/README.md "Mixed soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

from loadtest.soak import worker_pids

TOKEN = "soak-operator-token-0123456789abcdef"
HOST = "soak.test"
MiB = 1 << 20
BLOCK = random.Random(7).randbytes(MiB + 4096)
GAUGES = (
    "edgecache_fills_total",
    "edgecache_memory_tier_bytes",
    "edgecache_memory_tier_limit_bytes",
    "edgecache_disk_tier_bytes",
    "edgecache_disk_tier_budget_bytes",
    "edgecache_client_connections",
    "edgecache_requests_in_flight",
    "edgecache_fill_memory_bytes",
)


# --- the origin ----------------------------------------------------------------------------------------------


def body_of(seed: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of the object of this seed: a window of BLOCK that shifts with the seed, repeated."""
    out = bytearray()
    pos = start
    while pos < end:
        at = (pos + seed) % MiB
        take = min(end - pos, MiB + 4096 - at)
        out += BLOCK[at : at + take]
        pos += take
    return bytes(out)


def size_of(name: str, tail: bool) -> int:
    h = zlib.crc32(name.encode())
    if tail:
        return h % (64 << 10)
    bucket = h % 100
    if bucket < 5:
        return 0
    if bucket < 35:
        return h % (16 << 10)
    if bucket < 75:
        return h % MiB
    if bucket < 93:
        return MiB + h % (7 * MiB)
    if bucket < 99:
        return 8 * MiB + h % (12 * MiB)
    return 20 * MiB + h % (20 * MiB)


def one_range(header: str, size: int) -> tuple[int, int] | None:
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or size == 0 or (not m[1] and not m[2]):
        return None
    if not m[1]:
        return max(0, size - int(m[2])), size
    first = int(m[1])
    last = min(int(m[2]), size - 1) if m[2] else size - 1
    return (first, last + 1) if first < size and first <= last else None


async def serve_object(request: web.Request) -> web.StreamResponse:
    kind, name = request.match_info["kind"], request.match_info["name"]
    started = request.app["started"]
    if kind == "e404":
        return web.Response(status=404, body=b"no such object\n", headers={"Cache-Control": "max-age=30"})
    if kind == "e500":
        return web.Response(status=500, body=b"origin trouble\n")
    version = int((time.time() - started) // 240) if kind == "v" else 0
    seed = zlib.crc32(f"{kind}/{name}/{version}".encode())
    size = size_of(name, kind == "t")
    headers = {"Cache-Control": "max-age=90"}
    if kind == "vary":
        enc = request.headers.get("Accept-Encoding", "")
        seed ^= zlib.crc32(enc.encode())
        headers["Vary"] = "Accept-Encoding"
    if kind == "ns":
        headers["Cache-Control"] = "no-store"
    if kind != "nv":
        headers["ETag"] = f'"{seed:08x}"'
        headers["Accept-Ranges"] = "bytes"
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
    if kind in ("slow", "cut"):
        return await trickle(request, kind, seed, min(size, 4 * MiB), headers)
    span = one_range(request.headers.get("Range", ""), size) if kind != "nv" else None
    if span is None:
        return web.Response(body=body_of(seed, 0, size), headers=headers)
    headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
    return web.Response(status=206, body=body_of(seed, *span), headers=headers)


async def trickle(request: web.Request, kind: str, seed: int, size: int, headers: dict[str, str]) -> web.StreamResponse:
    if kind == "slow":
        await asyncio.sleep(1 + seed % 2)
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    end = size // 2 if kind == "cut" else size
    try:
        for at in range(0, end, 256 << 10):
            await response.write(body_of(seed, at, min(end, at + (256 << 10))))
            await asyncio.sleep(0.05)
    except ConnectionError:  # the node let the fetch go (its client left)
        return response
    if kind == "cut" and request.transport is not None:
        request.transport.abort()
        return response
    await response.write_eof()
    return response


def run_origin(port: int) -> None:
    app = web.Application()
    app["started"] = time.time()
    app.router.add_route("*", "/{kind}/{name:.*}", serve_object)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the node ------------------------------------------------------------------------------------------------


def node_config(out: Path, opts: argparse.Namespace) -> Path:
    cfg = out / "edge.toml"
    tiers = "exclusive" if opts.workers == 1 else "inclusive"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{opts.port}"]\nworkers = {opts.workers}\ndrain = 1\n'
        f'rate_limit = 200.0\nburst = 400.0\ntrusted_forwarders = ["127.0.0.1/32"]\n'
        f'[admin]\nlisten = "127.0.0.1:{opts.port + 1}"\n'
        f'[[admin.tokens]]\nname = "ops"\ntoken = "{TOKEN}"\nrole = "operator"\n'
        f'[cache]\ndir = "{out / "cache"}"\nmemory = "{opts.memory}"\ndisk = "{opts.disk}"\nslice = "1MiB"\n'
        f'tiers = "{tiers}"\n[log]\naccess = "{out / "access.log"}"\n'
        f"[origin]\nconnect_timeout = 2.0\nread_timeout = 10.0\n"
        f'[[sites]]\nname = "soak"\nhosts = ["{HOST}"]\norigins = ["http://127.0.0.1:{opts.port + 2}"]\n'
        f'key_query = ["*"]\n'
    )
    return cfg


# --- the clients ---------------------------------------------------------------------------------------------


class Load:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.url = f"http://127.0.0.1:{opts.port}"
        self.admin = f"http://127.0.0.1:{opts.port + 1}"
        self.port = opts.port
        self.deadline = time.monotonic() + opts.minutes * 60
        self.counts: Counter[str] = Counter()
        self.tail = 0

    def target(self, rng: random.Random) -> str:
        x = rng.random()
        hot = int(rng.paretovariate(0.9)) % 3000
        if x < 0.3:
            self.tail += 1
            return f"/t/{self.tail % 997}/{self.tail}"
        if x < 0.4:
            return f"/v/{hot}?q={rng.randrange(1 << 30)}"
        kind = (
            rng.choice(("v", "v", "v", "nv", "vary", "ns")) if x < 0.95 else rng.choice(("e404", "e500", "slow", "cut"))
        )
        return f"/{kind}/{hot}"

    def headers(self, rng: random.Random, target: str) -> dict[str, str]:
        name = target.split("?")[0].rsplit("/", 1)[1]
        size = max(1, size_of(name, target.startswith("/t/")))
        h = {"Host": HOST, "X-Forwarded-For": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"}
        if rng.random() < 0.5:
            h["Accept-Encoding"] = rng.choice(("gzip", "br", "identity", "gzip, br"))
        x = rng.random()
        if x < 0.4:
            first = rng.randrange(size + size // 20 + 1)  # one in twenty past the end: a 416
            h["Range"] = f"bytes={first}-{first + rng.choice((0, 999, MiB - 1, 3 * MiB))}"
        elif x < 0.45:
            h["Range"] = f"bytes=0-99,{rng.randrange(size)}-{size + 5}"
        elif x < 0.5:
            h["Range"] = f"bytes=-{rng.randrange(1, size + 2)}"
        return h

    async def request(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        method = "HEAD" if rng.random() < 0.08 else "GET"
        target = self.target(rng)
        try:
            async with session.request(method, self.url + target, headers=self.headers(rng, target)) as r:
                await r.read()
                self.counts[f"{method} {r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts[f"{method} {type(exc).__name__}"] += 1

    async def reset(self, rng: random.Random) -> None:
        """A client gone mid-body: a few KiB of a large answer read, then a TCP reset."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            path = f"/v/{rng.randrange(3000)}" if rng.random() < 0.5 else f"/slow/{rng.randrange(3000)}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(rng.choice((0, 100, 5000, 70000)) or 1), 3)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
            self.counts["reset"] += 1
        except OSError as exc:
            self.counts[f"reset {type(exc).__name__}"] += 1

    async def admin_call(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        if rng.random() < 0.8:
            soft = rng.random() < 0.4
            if rng.random() < 0.5:
                body: dict[str, object] = {"url": f"http://{HOST}/v/{rng.randrange(3000)}", "soft": soft}
            else:
                body = {"prefix": f"http://{HOST}/t/{rng.randrange(997)}/", "soft": soft}
            what, call = "purge", session.post(self.admin + "/purge", json=body, headers=auth)
        else:
            urls = [f"http://{HOST}/v/{rng.randrange(3000)}" for _ in range(rng.randrange(1, 6))]
            what, call = "prefetch", session.post(self.admin + "/prefetch", json={"urls": urls}, headers=auth)
        try:
            async with call as r:
                await r.read()
                self.counts[f"{what} {r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts[f"{what} {type(exc).__name__}"] += 1

    async def client(self, seed: int) -> None:
        rng = random.Random(seed)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            while time.monotonic() < self.deadline:
                x = rng.random()
                if x < 0.03:
                    await self.reset(rng)
                elif x < 0.04:
                    await self.admin_call(session, rng)
                else:
                    await self.request(session, rng)


# --- the samples ---------------------------------------------------------------------------------------------


def proc_figures(pid: int) -> tuple[int, int, int]:
    """VmRSS in KiB, open descriptors, threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    threads = int(re.search(r"Threads:\s+(\d+)", status)[1])  # type: ignore[index]
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def dir_figures(root: Path) -> tuple[int, int]:
    total = files = 0
    for base, _, names in os.walk(root):
        for n in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(base, n)).st_blocks * 512
                files += 1
    return total, files


async def gauges(session: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    async with session.get(admin + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in GAUGES:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def sample(load: Load, parent: int, out: Path, every: float) -> None:
    started = time.monotonic()
    with (out / "samples.csv").open("a") as csv:
        csv.write("seconds,pid,rss_kib,fds,threads,cache_bytes,cache_files," + ",".join(GAUGES) + ",answers\n")
        async with aiohttp.ClientSession() as session:
            while True:
                disk = await asyncio.to_thread(dir_figures, out / "cache")
                try:
                    g = await gauges(session, load.admin)
                except (aiohttp.ClientError, TimeoutError):
                    g = {}
                for pid in [parent, *worker_pids(parent)]:
                    rss, fds, threads = proc_figures(pid)
                    row = [round(time.monotonic() - started), pid, rss, fds, threads, *disk]
                    row += [int(g.get(k, -1)) for k in GAUGES] + [sum(load.counts.values())]
                    csv.write(",".join(map(str, row)) + "\n")
                csv.flush()
                if time.monotonic() > load.deadline:
                    return
                await asyncio.sleep(every)


async def soak(opts: argparse.Namespace, out: Path, parent: int) -> Load:
    load = Load(opts)
    sampler = asyncio.create_task(sample(load, parent, out, opts.every))
    await asyncio.gather(*(load.client(opts.seed * 1000 + n) for n in range(opts.clients)))
    await sampler
    return load


def summarise(samples: Path) -> list[str]:
    """Each process's RSS and descriptors, and the cache directory against the disk budget, over the second half."""
    rows = [line.split(",") for line in samples.read_text().splitlines()[1:]]
    late = [r for r in rows if int(r[0]) >= int(rows[-1][0]) / 2]
    out = []
    for pid in sorted({r[1] for r in late}, key=int):
        mine = [r for r in late if r[1] == pid]
        rss = [int(r[2]) // 1024 for r in mine]
        fds = [int(r[3]) for r in mine]
        out.append(f"pid {pid}: RSS {min(rss)}-{max(rss)} MiB, descriptors {min(fds)}-{max(fds)} (second half)")
    cache = [int(r[5]) for r in late]
    budget = int(late[-1][7 + GAUGES.index("edgecache_disk_tier_budget_bytes")])
    out.append(f"cache directory {min(cache) / MiB:.0f}-{max(cache) / MiB:.0f} MiB, disk budget {budget / MiB:.0f} MiB")
    return out


def wait_listening(port: int, seconds: float = 60) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak_mixed", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--memory", default="256MiB")
    parser.add_argument("--disk", default="512MiB")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=20410, help="the node's; the admin's is one more, origin's two")
    parser.add_argument("--out", required=True, help="a directory for the cache, config, log and samples")
    parser.add_argument("--origin-only", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop)  # a background job ignores SIGINT: TERM stops the node and origin too
    if opts.origin_only:
        run_origin(opts.port + 2)
        return 0
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, "-m", "loadtest.soak_mixed", "--port", str(opts.port), "--out", str(out)]
    origin = subprocess.Popen([*me, "--origin-only"])
    with (out / "node.log").open("wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "edgecache", "serve", "--config", str(node_config(out, opts))], stderr=log
        )
    try:
        wait_listening(opts.port + 2)
        wait_listening(opts.port)
        load = asyncio.run(soak(opts, out, node.pid))
        lines = [f"{k}: {v:,}" for k, v in sorted(load.counts.items())] + summarise(out / "samples.csv")
        (out / "summary.txt").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for proc in (node, origin):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
