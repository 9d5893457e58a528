"""The fast path's decision for a range hit, in process: microseconds of `Decider.answer` per request head.

A real node (open_node, its fast path's Decider, a real aiohttp origin on 127.0.0.1) holds one 32 MiB object, filled
through the node's own listener; then N single-range heads the way wrk sends them in the shared bench's W3u (Host,
X-EB and Range, in an order that differs per connection; 64 KiB-1 MiB ranges anywhere in the object) are decided
`--repeats` times. "new": every range of a pass is one never asked before (a player's next range); "asked a second
time": each asked once before the pass (cut again, and remembered); "repeat": the same heads again (W3a's aligned
ranges come back); "a second later": the same, each pass one second after the last (time.time() shifted), so that
every remembered answer's Age has ticked. `--ranges w3u|w3a`: the shared bench's 1 MiB ranges, anywhere or on
slice boundaries. The figure is the least of the passes' means (min-of-repeats: the machine is shared), and
`--profile` prints cProfile's breakdown of one pass of new ranges.

`--whole`: the same, for the whole answer: each head fed to a fast-path connection (FastPath.data_received), whose
transport counts what it is given and sends nothing: the decision, the cork, the metrics and the access log's
turn, no system call. The shared bench's W3 pays each of these microseconds several times over: after the copy of
a 1 MiB answer into the socket the caches are cold, and the same Python work cost 5-8 times its W1 cost there.
`--copy` (with --whole): the transport copies every answer's bytes into a 64 MiB ring, as the kernel copies them
into a socket's buffers, and the copies' own CPU time is left out of the figure: what is left is the Python work
with the caches as that copy leaves them.

    python -m loadtest.hitcpu [--heads 4096] [--repeats 15] [--profile] [--whole [--copy]] [--ranges player|w3u|w3a]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

from edgecache.config import one_origin
from edgecache.config.model import Listen
from edgecache.proxy.decide import Decider
from edgecache.proxy.fastserver import FastServer
from edgecache.proxy.prepared import Prepared
from edgecache.server import make_fast, make_server, open_node, start_listeners

SIZE = 32 * 2**20
PATH = "/video/vid1.bin"
HOST = "127.0.0.1:18100"
ORDERS = list(itertools.permutations(("host", "tag", "range")))
CLIENTS = [f"127.0.0.{n}" for n in range(1, len(ORDERS) + 1)]  # one for each order, as each player keeps its own


async def _origin(body: bytes) -> tuple[web.AppRunner, int]:
    """An origin answering PATH with nginx's fields (the bench's origin is nginx)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {"Last-Modified": "Sat, 05 Dec 2026 23:55:00 GMT", "ETag": '"6932a2f4-2000000"'}
        headers["Accept-Ranges"] = "bytes"
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get(PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


# The ranges' shapes (--ranges): a player's (64 KiB-1 MiB anywhere), the shared bench's W3u (1 MiB anywhere: most
# span two slices) and W3a (1 MiB on a slice boundary: one slice, and only SIZE / 1 MiB of them, so never new).
SHAPES = ("player", "w3u", "w3a")


def heads(n: int, rng: random.Random, shape: str = "player") -> list[bytes]:
    """n single-range heads as wrk writes them: the field order is its Lua table's, one per connection."""
    out = []
    for i in range(n):
        length = rng.randint(64 * 1024, 2**20) if shape == "player" else 2**20
        first = rng.randrange(0, SIZE, 2**20) if shape == "w3a" else rng.randint(0, SIZE - length)
        lines = {"host": f"Host: {HOST}", "tag": "X-EB: W3u", "range": f"Range: bytes={first}-{first + length - 1}"}
        order = ORDERS[i % len(ORDERS)]
        out.append(("\r\n".join([f"GET {PATH} HTTP/1.1", *(lines[k] for k in order)]) + "\r\n\r\n").encode())
    return out


_RANGE = re.compile(rb"Range: bytes=([0-9]+)-([0-9]+)")


class Sink:
    """A fast-path connection's transport that counts the bytes it is given and sends nothing (loadtest.fwdcpu's
    viewers too); given a `ring`, it copies them into it, in turn, and counts the thread CPU seconds that took."""

    def __init__(self, peer: str, ring: memoryview | None = None) -> None:
        self.peer = peer
        self.written = 0
        self.closed = False  # the node's shutdown closes it at the end
        self.ring, self.at, self.copying = ring, 0, 0.0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def writelines(self, data: Iterable[bytes | memoryview]) -> None:
        parts = list(data)
        if self.ring is not None:
            self._copy(parts)
        self.written += sum(map(len, parts))

    def _copy(self, data: list[bytes | memoryview]) -> None:
        ring, at, start = self.ring, self.at, time.thread_time()
        assert ring is not None
        for x in data:
            if at + len(x) > len(ring):
                at = 0
            ring[at : at + len(x)] = x
            at += len(x)
        self.at = at
        self.copying += time.thread_time() - start

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_reading(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closed

    def resume_reading(self) -> None:
        pass

    def pause_reading(self) -> None:
        raise SystemExit("the fast path stopped reading a connection that takes every answer")

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


RING = 64 * 2**20  # --copy's: twice the object, so that neither it nor the ring stays in the caches


def _whole(fast: FastServer, copy: bool = False) -> Callable[[list[bytes]], float]:
    """A pass of heads answered whole on keep-alive connections, one for each field order (heads() gives the i-th
    head the order ORDERS[i % 6]), each from a client of its own (CLIENTS), as a player keeps its fields' order:
    mean µs each; every answer must be written. `copy`: each copied into one ring (Sink), the copies' time left
    out."""
    ring = memoryview(bytearray(RING)) if copy else None
    conns, sinks = [fast.protocol() for _ in ORDERS], [Sink(client, ring) for client in CLIENTS]
    for conn, sink in zip(conns, sinks, strict=True):
        conn.connection_made(sink)  # type: ignore[arg-type]

    def answer(batch: list[bytes]) -> float:
        asked = sum(int(m[2]) - int(m[1]) + 1 for m in map(_RANGE.search, batch) if m is not None)
        before, copied, start = sum(sink.written for sink in sinks), sum(s.copying for s in sinks), time.thread_time()
        for head, conn in zip(batch, itertools.cycle(conns)):
            conn.data_received(head)
        fast.cork.release_parked()  # the large answers a loop writes as its turn ends (proxy.cork.Parked)
        spent = time.thread_time() - start - (sum(s.copying for s in sinks) - copied)
        written = sum(sink.written for sink in sinks) - before
        if any(sink.closed for sink in sinks):
            raise SystemExit("the fast path closed a keep-alive connection")
        if not asked < written < asked + 1024 * len(batch):  # the bodies, and a head each
            raise SystemExit(f"{written} bytes written for {asked} asked")
        return spent / len(batch) * 1e6

    return answer


def _pass(decider: Decider, batch: list[bytes]) -> float:
    """Mean µs of deciding each head of `batch`; every answer must be a cut 206."""
    answer = decider.answer
    start = time.thread_time()  # CPU time: other jobs on the machine take turns of its cores
    for head, client in zip(batch, itertools.cycle(CLIENTS)):  # the i-th head's fields in ORDERS[i % 6]: a client's
        answer(head, client)
    spent = time.thread_time() - start
    for head in batch[:8]:
        got = answer(head, "127.0.0.1")
        if not isinstance(got, Prepared) or got.hit.status != 206:
            raise SystemExit(f"not a cut 206: {head!r} -> {got!r}")
    return spent / len(batch) * 1e6


async def _bench(n: int, repeats: int, profile: bool, whole: bool, shape: str, copy: bool = False) -> None:
    body = os.urandom(SIZE)
    runner, port = await _origin(body)
    with tempfile.TemporaryDirectory() as tmp:
        config = one_origin(f"http://127.0.0.1:{port}", "127.0.0.1:8080", str(Path(tmp) / "c"), memory_bytes=2**30)
        config = replace(config, listen=(Listen("127.0.0.1", 0),))  # a port of the system's choosing
        async with open_node(config) as node:
            server = make_server(node)
            edge = web.ServerRunner(server)
            await edge.setup()
            fast = make_fast(node, server)
            sites = await start_listeners(node, edge, fast)
            edge_port = sites[0]._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                async with aiohttp.ClientSession() as session:
                    for _ in range(2):  # the fill, then a hit: the whole object is stored
                        async with session.get(f"http://127.0.0.1:{edge_port}{PATH}", headers={"Host": HOST}) as r:
                            assert await r.read() == body
                if whole:
                    what = "FastPath.data_received (the whole answer" + (", each copied out)" if copy else ")")
                    _measure(_whole(fast, copy), what, n, repeats, profile, shape)
                else:
                    decider = fast.decider
                    _measure(lambda batch: _pass(decider, batch), "Decider.answer", n, repeats, profile, shape)
            finally:
                await edge.cleanup()
                await fast.shutdown(1.0)
    await runner.cleanup()


def _measure(
    one_pass: Callable[[list[bytes]], float], what: str, n: int, repeats: int, profile: bool, shape: str
) -> None:
    rng = random.Random(14)
    one_pass(heads(n, rng, shape))  # warms the whole-object answers (one per field order)
    figures = []
    if shape != "w3a":  # W3a's ranges are never new
        new = min(one_pass(heads(n, rng, shape)) for _ in range(repeats))
        # Asked a second time: cut again, and remembered from now on (Decider.seen). The shared bench's W3u asks
        # wrk's 4,096 heads in turn, so of a run's ~9,000 requests the second 4,096 are these.
        second = min(one_pass(_asked_once(one_pass, heads(n, rng, shape))) for _ in range(repeats))
        figures = [f"new range {new:.2f} µs", f"asked a second time {second:.2f} µs"]
    batch = heads(n, rng, shape)
    one_pass(batch)
    one_pass(batch)
    again = min(one_pass(batch) for _ in range(repeats))
    figures.append(f"repeated range {again:.2f} µs")
    later = min(one_pass(batch) for _ in _seconds_later(repeats))
    figures.append(f"repeated a second later {later:.2f} µs")
    print(f"{what}, {n} {shape} heads, min of {repeats} passes: {', '.join(figures)}")
    if profile:
        batch = heads(n, rng, shape)
        prof = cProfile.Profile()
        prof.runcall(one_pass, batch)
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def _seconds_later(n: int) -> Iterator[None]:
    """`n` turns, each one second after the last on the clock the decisions read (time.time()): a remembered
    answer's Age has ticked at each, as the shared bench's W3u heads come back every 1.4 s or so."""
    real = time.time
    try:
        for k in range(1, n + 1):
            time.time = lambda k=k: real() + k  # type: ignore[misc]
            yield
    finally:
        time.time = real


def _asked_once(one_pass: Callable[[list[bytes]], float], batch: list[bytes]) -> list[bytes]:
    one_pass(batch)
    return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--whole", action="store_true", help="the whole answer (FastPath), not only its decision")
    ap.add_argument("--ranges", choices=SHAPES, default="player", help="the ranges' shape (SHAPES)")
    ap.add_argument("--copy", action="store_true", help="with --whole: each answer's bytes copied out, as a socket's")
    a = ap.parse_args()
    if a.copy and not a.whole:
        ap.error("--copy needs --whole")
    uvloop.run(_bench(a.heads, a.repeats, a.profile, a.whole, a.ranges, a.copy))


if __name__ == "__main__":
    main()
