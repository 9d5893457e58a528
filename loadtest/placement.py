"""What reading a memory-tier slice costs, by where its bytes live: glibc's heap (as a node keeps them) against huge
pages (issue 14: one node process's W3u cost 293 µs a request and the next's 228, the same code).

N slices of 1 MiB are made as a fill makes them (rssbound.heap_slices, then each the join of origin-sized chunks),
so they land on glibc's heap in 4 KiB pages as a node's do. The same bytes are copied into a private anonymous
mapping with MADV_HUGEPAGE (2 MiB pages where the kernel has them: THP `madvise` mode is enough). Then:

- read: each slice copied out whole (one 1 MiB memmove into a buffer that stays in cache), every slice of both
  placements in a shuffled order, `--passes` times; a slice's figure is its least time, so a pass slowed by another
  job on the machine drops out. The spread of these figures over the heap's slices, and from one run (a process) to
  the next, is what the placement decides.
- send (`--send N`): W3u's answer, a head and a 1 MiB range across two slices (two memoryviews, one sendmsg), written
  into a loopback TCP connection read by a child process on another CPU; the placements alternate request by
  request; thread CPU time of each sendmsg, so the kernel's copy out of the slices is counted.
- `--collapse`: then MADV_COLLAPSE the heap's slices into huge pages in place (what a node could do to the slices it
  already holds) and read them again; the CPU time the collapse took is printed.

Also printed: AnonHugePages, and (as root) the share of each placement's 4 KiB pages that follow the one before
physically. Run it several times: each run is a process, with its own heap pages.

    python -m loadtest.placement [--slices 512] [--passes 5] [--send 6000] [--collapse] [--port 0] [--cpu 1]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import mmap
import os
import random
import socket
import statistics
import time
from collections.abc import Sequence

from edgecache.rssbound import heap_slices

MiB = 2**20
HUGE = 2 * MiB
MADV_COLLAPSE = 25  # Linux 6.1
CHUNKS = (65536, 131072, 262144)  # sizes the origin client's chunks come in
HEAD = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 1-1048576/268435456\r\nContent-Length: 1048576\r\n\r\n"


def make_slices(n: int, seed: int) -> list[bytes]:
    """N slices of 1 MiB on glibc's heap, each joined from chunks as a fill joins them (proxy.slicebuf)."""
    heap_slices(MiB)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chunks, left = [], MiB
        while left:
            size = min(left, rng.choice(CHUNKS))
            chunks.append(rng.randbytes(size))
            left -= size
        out.append(b"".join(chunks))
    return out


def address(data: bytes | memoryview | mmap.mmap) -> int:
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


def huge_arena(slices: Sequence[bytes]) -> tuple[mmap.mmap, list[memoryview]]:
    """The same bytes in a private anonymous mapping advised MADV_HUGEPAGE, from a 2 MiB boundary."""
    size = len(slices) * MiB
    arena = mmap.mmap(-1, size + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -address(arena) % HUGE
    arena.madvise(mmap.MADV_HUGEPAGE, start, size)
    view = memoryview(arena)
    parts = []
    for i, data in enumerate(slices):
        part = view[start + i * MiB : start + (i + 1) * MiB]
        part[:] = data
        parts.append(part)
    return arena, parts


def read_costs(placements: dict[str, list[int]], passes: int) -> dict[str, list[float]]:
    """Each slice's least time (µs) to be copied out whole, over `passes` shuffled passes of all placements."""
    out = ctypes.create_string_buffer(MiB)
    dst = ctypes.addressof(out)
    order = [(name, i) for name, addrs in placements.items() for i in range(len(addrs))]
    best = {name: [float("inf")] * len(addrs) for name, addrs in placements.items()}
    rng = random.Random(0)
    for _ in range(passes):
        rng.shuffle(order)
        for name, i in order:
            t0 = time.perf_counter_ns()
            ctypes.memmove(dst, placements[name][i], MiB)
            best[name][i] = min(best[name][i], (time.perf_counter_ns() - t0) / 1e3)
    return best


def contiguity(addrs: Sequence[int]) -> float | None:
    """The share of the slices' 4 KiB pages whose physical page follows the one before (None: pagemap unreadable)."""
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pfns = []
            for a in addrs:
                for page in range(a & ~4095, a + MiB, 4096):
                    pagemap.seek(page // 4096 * 8)
                    pfns.append(int.from_bytes(pagemap.read(8), "little") & (2**55 - 1))
    except OSError:
        return None
    if not any(pfns):
        return None
    return sum(b == a + 1 for a, b in itertools.pairwise(pfns)) / (len(pfns) - 1)


def anon_huge_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


def _reader(listener: socket.socket, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    conn, _ = listener.accept()
    buf = bytearray(256 * 1024)
    while conn.recv_into(buf):
        pass
    os._exit(0)


Sources = dict[str, Sequence[bytes | memoryview]]


def send_costs(sources: Sources, requests: int, port: int, cpu: int) -> dict[str, list[float]]:
    """Thread CPU µs of each W3u-like answer's sendmsg (a head and a 1 MiB range across two slices), the placements
    taking turns, into a loopback connection drained by a child process on `cpu`."""
    listener = socket.create_server(("127.0.0.1", port))
    child = os.fork()
    if child == 0:
        _reader(listener, cpu)
    sock = socket.create_connection(listener.getsockname())
    listener.close()
    rng = random.Random(1)
    names = list(sources)
    costs: dict[str, list[float]] = {name: [] for name in names}
    n = len(next(iter(sources.values())))
    for i in range(requests):
        if i % len(names) == 0:
            first, cut = rng.randrange(n - 1), rng.randrange(1, MiB)
        name = names[i % len(names)]
        parts = [HEAD, memoryview(sources[name][first])[cut:], memoryview(sources[name][first + 1])[:cut]]
        t0 = time.thread_time_ns()
        sent = sock.sendmsg(parts)
        if sent < len(HEAD) + MiB:  # a blocking socket takes it all; never expected
            raise RuntimeError(f"sendmsg took {sent} bytes")
        costs[name].append((time.thread_time_ns() - t0) / 1e3)
    sock.close()
    os.waitpid(child, 0)
    return costs


def _line(name: str, values: Sequence[float]) -> str:
    v = sorted(values)
    return (
        f"{name:>10}: p10 {v[len(v) // 10]:6.1f}  median {statistics.median(v):6.1f}  mean {statistics.fmean(v):6.1f}"
        f"  p90 {v[len(v) * 9 // 10]:6.1f} µs"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=512)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--send", type=int, default=0, help="W3u-like answers sent, all placements together")
    ap.add_argument("--collapse", action="store_true", help="then MADV_COLLAPSE the heap's slices and read again")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=1, help="this process's CPU (the reader takes the other)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {args.cpu})
    slices = make_slices(args.slices, args.seed)
    arena, parts = huge_arena(slices)
    placements = {"heap": [address(s) for s in slices], "huge pages": [address(p) for p in parts]}
    print(f"AnonHugePages {anon_huge_kib()} KiB (the arena is {len(parts)} MiB)")
    for name, addrs in placements.items():
        share = contiguity(addrs)
        print(f"{name:>10}: {'?' if share is None else f'{share:.2f}'} of pages physically after the one before")
    print("read: each slice's least time to be copied out whole")
    for name, best in read_costs(placements, args.passes).items():
        print(_line(name, best))
    if args.send:
        print("send: thread CPU of one W3u answer's sendmsg (head + 1 MiB across two slices)")
        sources: Sources = {"heap": slices, "huge pages": parts}
        for name, costs in send_costs(sources, args.send, args.port, 1 - args.cpu).items():
            print(_line(name, costs))
    if args.collapse:
        lo, hi = min(placements["heap"]), max(placements["heap"]) + MiB
        lo, hi = -(-lo // HUGE) * HUGE, hi // HUGE * HUGE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        t0 = time.thread_time()
        rc = libc.madvise(lo, hi - lo, MADV_COLLAPSE)
        took = time.thread_time() - t0
        print(f"MADV_COLLAPSE of {(hi - lo) // MiB} MiB: rc {rc} errno {ctypes.get_errno()}, {took * 1e3:.0f} ms CPU")
        print(f"AnonHugePages {anon_huge_kib()} KiB")
        print(_line("collapsed", read_costs({"heap": placements["heap"]}, args.passes)["heap"]))
    del arena  # the views in `parts` keep the mapping until the process ends


if __name__ == "__main__":
    main()
