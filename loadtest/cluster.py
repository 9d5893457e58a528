"""Forwarded against direct: what a request costs when it lands on a node that does not own its object.

Three edgecache nodes on loopback in front of one nginx origin, laid out like ../shared/bench (wrk on CPU 0;
the origin and the three nodes on CPU 1, one worker each). For each workload, wrk asks the owner of the objects
directly, then asks another node for the same objects (which forwards them to the owner), interleaved over
several rounds; the table gives the medians and forwarded / direct.

    python -m loadtest.cluster [--rounds 3] [--duration 4] [--keep DIR] [--base-port 18700] [--only spread]

Workloads: 4 KiB hits (64 connections; objects asked often enough that the forwarding node keeps its own copies
of them, core.popularity), 4 KiB hits of about 3,000 objects none of which is hot there (each forwarded request is
relayed to the owner), aligned 1 MiB ranges of a warm 64 MiB video (32 connections), and cold
1 MiB ranges (each range of a fresh 64 MiB video asked once, 8 connections, MiB/s). Every byte is checked against
the file before anything is timed. Each run also gives the CPU time (user + system, from /proc) both nodes spent
per request, the owner's and the forwarding node's together and each apart: other jobs on the machine move it less
than req/s.
`--base-port` moves the four listeners; `--only` runs some workloads alone. Needs nginx and wrk (apt-get install
nginx wrk). Only 127.0.0.1 is used; every process started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgecache.config import Config

SMALL = 300
# 4 KiB objects, about a third of them the owner's, each asked so rarely at the forwarding node that none becomes
# hot there (core.popularity): every request is relayed to the owner, the cost of a forward itself. Fewer than the
# decision memos hold (4,096 heads), as a node's popular objects are. A run that asks any of them THRESHOLD times
# is marked in the table (hot_risk).
SPREAD = 9000
VIDEO = 64 * 2**20
MIB = 2**20
BASE_PORT = 18700  # the origin's; the nodes take the next three (--base-port)
WORKLOADS = ("hits", "spread", "ranges", "cold")
HOST = "cluster.bench"
KEY = "loadtest-cluster-key-" + "0" * 32  # loopback only

ORIGIN_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {state}/tmp;
    proxy_temp_path {state}/tmp;
    fastcgi_temp_path {state}/tmp;
    uwsgi_temp_path {state}/tmp;
    scgi_temp_path {state}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {content};
        add_header Cache-Control "public, max-age=3600";
    }}
}}
"""

# request() cycles through the listed paths, each with its Range when one is given.
WRK_SCRIPT = """
local lines = {}
for l in io.lines(os.getenv("CB_LIST")) do lines[#lines + 1] = l end
local reqs, i = {}, 0
function init(args)
   for k, l in ipairs(lines) do
      local path, range = l:match("^(%S+) ?(%S*)$")
      local h = {Host = os.getenv("CB_HOST")}
      if range ~= "" then h["Range"] = "bytes=" .. range end
      reqs[k] = wrk.format("GET", path, h)
   end
   i = math.random(#reqs) - 1
end
function request()
   i = i + 1
   if i > #reqs then i = 1 end
   return reqs[i]
end
"""


@dataclass
class Node:
    id: str
    port: int
    config: Path
    pid: int = 0  # its process group's (the supervisor's and its workers')


def cpu_seconds(groups: Iterable[int]) -> tuple[float, int]:
    """CPU time (user + system) spent so far by the processes of these process groups, and the read and write
    system calls they made (libuv reads and writes sockets with read(2) and write(2), counted in /proc/PID/io):
    figures that other jobs on the machine move less than req/s (a forward costs both the node asked and the
    owner)."""
    wanted, ticks, total, calls = set(groups), os.sysconf("SC_CLK_TCK"), 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in wanted:  # pgrp; utime and stime are fields 14 and 15 of stat(5)
                total += int(fields[11]) + int(fields[12])
                io = dict(line.split(": ") for line in (stat.parent / "io").read_text().splitlines())
                calls += int(io["syscr"]) + int(io["syscw"])
    return total / ticks, calls


def write_content(root: Path, videos: list[str]) -> None:
    rnd = os.urandom
    (root / "small").mkdir(parents=True, exist_ok=True)
    for i in range(SMALL):
        (root / "small" / str(i)).write_bytes(rnd(4096))
    (root / "spread").mkdir(exist_ok=True)
    for i in range(SPREAD):
        (root / "spread" / str(i)).write_bytes(rnd(4096))
    (root / "video").mkdir(exist_ok=True)
    for path in videos:
        (root / path.lstrip("/")).write_bytes(rnd(VIDEO))


def owned(config: Path, me: str, stem: str, count: int) -> list[str]:
    """The first `count` video paths named stem0, stem1, ... that the ring gives to node `me`."""
    names = (f"/video/{stem}{i}.bin" for i in range(1000))
    return owned_of(config, me, names)[:count]


def owned_of(config: Path, me: str, paths: Iterable[str]) -> list[str]:
    """The paths the ring gives to node `me`."""
    from edgecache import config as cfg

    loaded = cfg.load(config)
    return [p for p in paths if _owner(loaded, p) == me]


def node_config(state: Path, nodes: list[Node], me: Node, origin_port: int) -> str:
    members = "".join(f'\n[[cluster.nodes]]\nid = "{n.id}"\naddress = "127.0.0.1:{n.port}"\n' for n in nodes)
    return f"""[server]
listen = ["127.0.0.1:{me.port}"]

[cache]
dir = "{state / me.id}"
memory = "1GiB"
disk = "2GiB"
slice = "1MiB"

[cluster]
self = "{me.id}"
key = "{KEY}"
{members}
[[sites]]
name = "bench"
hosts = ["{HOST}"]
origins = ["http://127.0.0.1:{origin_port}"]
"""


def owner_of(config: Path, path: str) -> str:
    from edgecache import config as cfg

    return _owner(cfg.load(config), path)


def _owner(config: Config, path: str) -> str:
    from edgecache.cli import _ring_offline

    answer = _ring_offline(config, f"http://{HOST}{path}")
    owners = answer["owners"]
    assert isinstance(owners, list)
    return str(owners[0]["id"])


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"127.0.0.1:{port} did not start listening")


def fetch(port: int, path: str, rng: str = "") -> bytes:
    headers = {"Host": HOST, **({"Range": f"bytes={rng}"} if rng else {})}
    ask = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(ask, timeout=30) as resp:
        return bytes(resp.read())


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wrk(port: int, listing: Path, conns: int, seconds: int, script: Path, pin: list[str]) -> dict[str, float]:
    env = {**os.environ, "CB_LIST": str(listing), "CB_HOST": HOST}
    argv = [*pin, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s", "-s", str(script)]
    out = subprocess.run([*argv, f"http://127.0.0.1:{port}/"], env=env, capture_output=True, text=True, timeout=600)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out.stdout)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out.stdout)
    if rps is None or p99 is None or total is None:
        raise SystemExit(f"wrk said:\n{out.stdout}\n{out.stderr}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
        "errors": 1.0 if errors is not None else 0.0,
        "requests": float(total.group(1)),
    }


async def cold_pass(port: int, video: str, content: Path, conns: int = 8) -> dict[str, float]:
    """Each 1 MiB range of a video nobody asked for yet, once, over `conns` keep-alive connections; every body
    is compared with the file. (wrk cannot stop once each range has been asked.)"""
    import aiohttp

    data = (content / video.lstrip("/")).read_bytes()
    todo = list(range(0, VIDEO, MIB))
    took: list[float] = []
    bad = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal bad
        while todo:
            first = todo.pop(0)
            began = time.perf_counter()
            headers = {"Host": HOST, "Range": f"bytes={first}-{first + MIB - 1}"}
            async with session.get(f"http://127.0.0.1:{port}{video}", headers=headers) as resp:
                body = await resp.read()
            took.append(time.perf_counter() - began)
            bad += resp.status != 206 or body != data[first : first + MIB]

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    elapsed = time.perf_counter() - began
    took.sort()
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    return {"rps": VIDEO / MIB / elapsed, "p99_ms": p99 * 1000, "errors": float(bad)}


def check_bytes(content: Path, nodes: list[Node], small: list[str], video: str) -> None:
    data = (content / video.lstrip("/")).read_bytes()
    for node in nodes:
        for path in small[:20] + small[-20:]:
            assert fetch(node.port, path) == (content / path.lstrip("/")).read_bytes(), (node.id, path)
        for first in (0, 5 * MIB + 17, VIDEO - MIB):
            rng = f"{first}-{first + MIB - 1}"
            body = fetch(node.port, video, rng)
            assert hashlib.sha256(body).digest() == hashlib.sha256(data[first : first + MIB]).digest(), (node.id, rng)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per timed wrk run")
    ap.add_argument("--keep", type=Path, help="work directory to use and keep (default: a temporary one)")
    ap.add_argument("--base-port", type=int, default=BASE_PORT, help="the origin's port; the nodes take the next three")
    ap.add_argument("--only", choices=WORKLOADS, action="append", help="run only this workload (may be repeated)")
    args = ap.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    work = args.keep or Path(tempfile.mkdtemp(prefix="edgecache-cluster-"))
    try:
        return run(work, args.rounds, args.duration, args.base_port, tuple(args.only or WORKLOADS))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, rounds: int, duration: int, base_port: int, only: tuple[str, ...]) -> int:
    pinned = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    client_pin, server_pin = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pinned else ([], [])
    content, state = work / "content", work / "state"
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    origin_port = base_port
    nodes = [Node(f"node{i}", base_port + i, state / f"node{i}.toml") for i in (1, 2, 3)]
    for node in nodes:
        node.config.write_text(node_config(state, nodes, node, origin_port))
    (state / "origin.conf").write_text(ORIGIN_CONF.format(state=state, port=origin_port, content=content))
    script = state / "workload.lua"
    script.write_text(WRK_SCRIPT)
    owner, other = nodes[0], nodes[1]
    small = owned_of(owner.config, owner.id, (f"/small/{i}" for i in range(SMALL)))
    spread = owned_of(owner.config, owner.id, (f"/spread/{i}" for i in range(SPREAD)))
    warm, colds = owned(owner.config, owner.id, "warm", 1)[0], owned(owner.config, owner.id, "cold", 2)
    if not (content / "spread").is_dir():  # a --keep directory from before this workload: written again
        write_content(content, [warm, *colds])
    lists = {
        "hits": state / "hits.txt",
        "spread": state / "spread.txt",
        "ranges": state / "ranges.txt",
    }
    lists["hits"].write_text("".join(f"{p}\n" for p in small))
    lists["spread"].write_text("".join(f"{p}\n" for p in spread))
    starts = list(range(0, VIDEO, MIB))
    lists["ranges"].write_text("".join(f"{warm} {s}-{s + MIB - 1}\n" for s in starts))
    with contextlib.ExitStack() as stack:
        origin_argv = [*server_pin, "nginx", "-c", str(state / "origin.conf"), "-p", str(state)]
        stack.enter_context(started(origin_argv, state / "origin.log"))
        for node in nodes:
            node_argv = [*server_pin, sys.executable, "-m", "edgecache", "serve", "--config", str(node.config)]
            node.pid = stack.enter_context(started(node_argv, state / f"{node.id}.log")).pid
        for port in (origin_port, *(n.port for n in nodes)):
            wait_ready(port, time.monotonic() + 60)
        for path in small + spread:  # warm through the forwarding node: the owner fills
            fetch(other.port, path)
        for s in starts:
            fetch(other.port, warm, f"{s}-{s + MIB - 1}")
        check_bytes(content, nodes, small + spread[::300], warm)
        results = measure(rounds, duration, lists, owner, other, script, client_pin, colds, content, only)
    print_table(results, pinned)
    return 0


def measure(
    rounds: int,
    duration: int,
    lists: dict[str, Path],
    owner: Node,
    other: Node,
    script: Path,
    pin: list[str],
    colds: list[str],
    content: Path,
    only: tuple[str, ...] = WORKLOADS,
) -> dict[str, dict[str, list[dict[str, float]]]]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for r in range(rounds):
        for workload, conns in (("hits", 64), ("spread", 64), ("ranges", 32)):
            if workload not in only:
                continue
            for way, node in (("direct", owner), ("forwarded", other)):
                before = [cpu_seconds([pid]) for pid in (owner.pid, other.pid)]
                got = wrk(node.port, lists[workload], conns, duration, script, pin)
                per_request(got, before, [cpu_seconds([pid]) for pid in (owner.pid, other.pid)])
                if workload == "spread" and way == "forwarded":
                    got["hot"] = float(hot_risk(got["rps"] * duration, lists[workload]))
                results.setdefault(workload, {}).setdefault(way, []).append(got)
                line = f"{got['rps']:>10.0f} req/s  p99 {got['p99_ms']:.2f} ms  {got['cpu_us']:.1f} CPU µs/req"
                line += f" (owner {got['cpu_owner']:.1f}, other {got['cpu_other']:.1f})"
                line += f"  {got['calls']:.2f} reads+writes/req"
                print(f"round {r + 1} {workload:<7} {way:<9} {line}")
    for way, node, video in (("direct", owner, colds[0]), ("forwarded", other, colds[1])) if "cold" in only else ():
        got = asyncio.run(cold_pass(node.port, video, content))
        results.setdefault("cold", {}).setdefault(way, []).append(got)
        print(f"cold    {way:<9} {got['rps']:>10.1f} MiB/s p99 {got['p99_ms']:.2f} ms")
    return results


def per_request(got: dict[str, float], before: list[tuple[float, int]], after: list[tuple[float, int]]) -> None:
    """The CPU µs per request the owner and the other node each spent (a forward costs both, differently), their
    sum, and the reads and writes both made, from cpu_seconds() of each before and after a run."""
    per = max(got["requests"], 1)
    spent = [(a[0] - b[0]) / per * 1e6 for a, b in zip(after, before, strict=True)]
    got["cpu_owner"], got["cpu_other"] = spent
    got["cpu_us"] = sum(spent)
    got["calls"] = sum(a[1] - b[1] for a, b in zip(after, before, strict=True)) / per


def hot_risk(requests: float, listing: Path) -> bool:
    """Whether a run asked each object of the list as often as makes one hot (its premise not holding)."""
    from edgecache.core.popularity import THRESHOLD

    return requests / len(listing.read_text().split()) >= THRESHOLD


def print_table(results: dict[str, dict[str, list[dict[str, float]]]], pinned: bool) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    layout = "wrk on CPU 0; origin and 3 nodes on CPU 1" if pinned else "unpinned"
    print(f"\n{cpu}, {os.cpu_count()} CPUs, {layout}; medians")
    print("| workload | direct | forwarded | forwarded / direct | p99 ms direct / forwarded | CPU µs/req d / f |")
    print("|---|---|---|---|---|---|")
    names = {
        "hits": "4 KiB hits, 64 conns (req/s)",
        "spread": "4 KiB hits, none hot, 64 conns (req/s)",
        "ranges": "1 MiB ranges, 32 conns (req/s)",
        "cold": "cold 1 MiB ranges, 8 conns (MiB/s)",
    }
    for workload, ways in results.items():
        d = statistics.median(x["rps"] for x in ways["direct"])
        f = statistics.median(x["rps"] for x in ways["forwarded"])
        pd = statistics.median(x["p99_ms"] for x in ways["direct"])
        pf = statistics.median(x["p99_ms"] for x in ways["forwarded"])
        cd = statistics.median(x.get("cpu_us", 0.0) for x in ways["direct"])
        cf = statistics.median(x.get("cpu_us", 0.0) for x in ways["forwarded"])
        bad = " (errors)" if any(x["errors"] for w in ways.values() for x in w) else ""
        bad += " (objects may have become hot)" if any(x.get("hot") for x in ways["forwarded"]) else ""
        cells = f"{d:,.0f} | {f:,.0f} | {f / d:.2f}{bad} | {pd:.2f} / {pf:.2f} | {cd:.0f} / {cf:.0f}"
        print(f"| {names[workload]} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
