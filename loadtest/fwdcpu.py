"""A forwarded long-tail hit's CPU at both nodes, in process: microseconds a forward at the forwarding node (its loop
thread's CPU time) and at the owner (its worker processes' CPU time, from /proc).

The owner is a real node process (`edgecache serve`) in front of a real aiohttp origin; the forwarding node runs in
this process (open_node, its fast path), its peer connections real sockets to the owner. Each pass feeds one head
to each of `--conns` fast-path connections in one loop turn, as wrk's 64 connections reach a node (the forwards of a
turn are pipelined to the owner, proxy.peerpool), and waits for every answer: each viewer's transport counts what it
is given and sends nothing, so the viewers' own system calls (a read and a write each, the same for a hit) are not
counted. Heads cycle through `--objects` 4 KiB objects the owner holds, few enough for the forward memo, asked too
rarely to become hot here. The figures are the least of `--repeats` rounds' means (min-of-rounds: the machine is
shared); `--profile` prints cProfile's breakdown of the forwarding node over one round.

    python -m loadtest.fwdcpu [--objects 3000] [--conns 64] [--passes 200] [--repeats 7] [--profile] [--base-port 18800]
        [--headroom 256MiB]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import uvloop
from aiohttp import web

from edgecache import config as cfg
from edgecache.proxy.fastpath import FastPath
from edgecache.proxy.fastserver import FastServer
from edgecache.server import make_fast, make_server, open_node, start_listeners
from loadtest.cluster import HOST, Node, node_config, owned_of, started, wait_ready
from loadtest.hitcpu import Sink

BODY = 4096


async def _origin(port: int) -> web.AppRunner:
    """4 KiB objects with nginx's fields (the cluster benchmark's origin is nginx)."""

    async def handle(request: web.Request) -> web.Response:
        body = request.path.encode().ljust(BODY, b"x")
        headers = {"Last-Modified": "Sat, 05 Dec 2026 23:55:00 GMT", "ETag": '"6932a2f4-1000"'}
        headers["Cache-Control"], headers["Accept-Ranges"] = "public, max-age=3600", "bytes"
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _cpu(pgrp: int) -> float:
    """CPU seconds (user + system) of the processes of a process group (the owner's supervisor and worker)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgrp:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


class _Waiter:
    """The end of a pass: every connection's answer ended (FastPath.ended, wrapped). FastPath.ended also ends a task
    that runs before a head is decided (a catch-up with another worker's purges), after which the head goes on: an
    end with nothing written since the pass began is that, not the answer's."""

    def __init__(self, conns: list[FastPath], sinks: list[Sink]) -> None:
        self.left = 0
        self.answered: asyncio.Future[None] | None = None
        self.sinks = sinks
        self.before: dict[FastPath, int] = {}
        self.local = 0
        for conn in conns:
            conn.ended = functools.partial(self.ended, conn)  # type: ignore[method-assign]

    def ended(self, conn: FastPath, exc: BaseException | None, at_once: bool = False) -> None:
        was = self.before.get(conn)
        if not at_once:
            FastPath.ended(conn, exc)
        if exc is None and was is not None and was == cast("Sink", conn.transport).written:
            return
        self.left -= 1
        if not self.left and self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def at_once(self, conns: list[FastPath]) -> None:
        """Count the answers written as their heads were read: a copy of the object this node holds (a hot one's),
        with no task to end. They are counted in `local`, so a figure is known to be of forwards."""
        for conn in conns:
            if not conn.busy and cast("Sink", conn.transport).written != self.before[conn]:
                self.local += 1
                self.ended(conn, None, at_once=True)

    def expect(self, conns: list[FastPath]) -> asyncio.Future[None]:
        self.before = {conn: sink.written for conn, sink in zip(conns, self.sinks, strict=True)}
        self.left, self.answered = len(conns), asyncio.get_running_loop().create_future()
        return self.answered


def _viewers(fast: FastServer, n: int) -> tuple[list[FastPath], list[Sink], _Waiter]:
    """n viewers' connections, all from one address (as wrk's are: the forwards' sent heads are remembered)."""
    conns, sinks = [fast.protocol() for _ in range(n)], [Sink("127.0.0.1") for _ in range(n)]
    for conn, sink in zip(conns, sinks, strict=True):
        conn.connection_made(sink)  # type: ignore[arg-type]
    return conns, sinks, _Waiter(conns, sinks)


async def _round(viewers: tuple[list[FastPath], list[Sink], _Waiter], heads: list[bytes], passes: int, at: int) -> int:
    """`passes` passes of one head per connection; waits for every answer. Returns where the heads go on from."""
    conns, sinks, waiter = viewers
    for _ in range(passes):
        before = [s.written for s in sinks]
        answered = waiter.expect(conns)
        for conn in conns:
            conn.data_received(heads[at % len(heads)])
            at += 1
        waiter.at_once(conns)
        await asyncio.wait_for(answered, 30)
        for sink, was in zip(sinks, before, strict=True):
            if not BODY < sink.written - was < BODY + 1024 or sink.closed:
                raise SystemExit(f"an answer of {sink.written - was} bytes (closed: {sink.closed})")
    return at


async def _bench(here: Path, owner: int, origin_port: int, heads: list[bytes], args: argparse.Namespace) -> None:
    origin = await _origin(origin_port)
    try:
        async with open_node(cfg.load(here)) as node:
            server = make_server(node)
            edge = web.ServerRunner(server)
            await edge.setup()
            fast = make_fast(node, server)
            await start_listeners(node, edge, fast)
            try:
                await _measure(fast, owner, heads, args)
            finally:
                await edge.cleanup()
                await fast.shutdown(1.0)
    finally:
        await origin.cleanup()


async def _measure(fast: FastServer, owner: int, heads: list[bytes], args: argparse.Namespace) -> None:
    viewers = _viewers(fast, args.conns)
    at = await _round(viewers, heads, len(heads) // args.conns + 1, 0)  # the owner fills each object
    at = await _round(viewers, heads, len(heads) // args.conns + 1, at)  # remembered forwards, at both nodes
    viewers[2].local = 0  # (the owner may not be up for the first: this node then answers as the owner)
    here, there, system = [], [], []
    for _ in range(args.repeats):
        t0, o0, r0 = time.thread_time(), _cpu(owner), resource.getrusage(resource.RUSAGE_THREAD)
        at = await _round(viewers, heads, args.passes, at)
        count = args.passes * args.conns
        here.append((time.thread_time() - t0) / count * 1e6)
        system.append((resource.getrusage(resource.RUSAGE_THREAD).ru_stime - r0.ru_stime) / count * 1e6)
        there.append((_cpu(owner) - o0) / count * 1e6)
    best = here.index(min(here))
    rounds = ", ".join(f"{x:.1f}" for x in here)
    print(f"forwarding node {min(here):.1f} µs a forward, {system[best]:.1f} of it in the kernel (rounds {rounds})")
    print(f"owner           {min(there):.1f} µs a forward (rounds {', '.join(f'{x:.1f}' for x in there)})")
    if viewers[2].local:  # those rounds mixed local hits into the forwards: their figures are low
        print(f"{viewers[2].local} answers were local copies' hits, not forwards")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        await _round(viewers, heads, args.passes, at)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-port", type=int, default=18800, help="the origin's; the two nodes take the next two")
    ap.add_argument("--objects", type=int, default=3000)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--headroom", default="", help='both nodes\' cache.memory_headroom ("256MiB"; default: its own)')
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecache-fwdcpu-") as tmp:
        work, base = Path(tmp), args.base_port
        nodes = [Node(f"node{i}", base + i, work / f"node{i}.toml") for i in (1, 2)]
        for node in nodes:
            text = node_config(work, nodes, node, base)
            if args.headroom:  # what a worker keeps at hand of its long tail follows it (metadata, memos)
                text = text.replace('memory = "1GiB"\n', f'memory = "1GiB"\nmemory_headroom = "{args.headroom}"\n')
            node.config.write_text(text)
        owner, here = nodes
        paths = owned_of(owner.config, owner.id, (f"/spread/{i}" for i in range(args.objects * 3)))[: args.objects]
        heads = [f"GET {p} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for p in paths]
        argv = [sys.executable, "-m", "edgecache", "serve", "--config", str(owner.config)]
        with started(argv, work / "owner.log") as proc:
            wait_ready(owner.port, time.monotonic() + 60)
            uvloop.run(_bench(here.config, proc.pid, base, heads, args))


if __name__ == "__main__":
    main()
