"""Where a cold 1 MiB slice's CPU goes, part by part, in process: microseconds of thread CPU per slice.

The shared bench's W4 (every aligned 1 MiB range of an uncached 256 MiB file, in order, 4 connections) is bound by
the CPU the node and its origin share; its figure moves 10-20% between runs on a shared VM, too much to see a part
of a slice's cost move. Here each part of a cold slice's way is timed alone, min of passes, in the thread that pays
it on a node (the loop's, or a disk thread's):

- origin read: the node's own OriginClient (aiohttp) asks a 1 MiB range of an origin in another process and reads
  the body as a fill does (read_chunks); next to it the floor, a bare uvloop Protocol reading the same answer.
- fill: the body's chunks, as they came, through a Fill to a reader (feed, the slice's join, Fill.read).
- disk put: DiskTier's write of a slice as a disk thread runs it (its checksum, the O_DIRECT staging copy, one SQLite
  transaction); the checksum (storage.checksum, and zlib.crc32 as it was) and the staging copy alone next to it.
- first touch: a 1 MiB join kept, each into fresh memory (a memory tier that grows: every slice of a cold pass into
  a 3 GiB tier), against one into memory freed just before (a full tier that evicts as it admits).

    python -m loadtest.coldcpu [--slices 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from edgecache.config import one_origin
from edgecache.proxy.fill import Fill
from edgecache.proxy.origin import OriginClient, read_chunks
from edgecache.storage.checksum import tag_of
from edgecache.storage.disk import DiskTier

MiB = 2**20
OBJECT = 64 * MiB

# The origin: a bare asyncio server answering a Range with 206 from memory (its CPU is not this process's).
ORIGIN = r"""
import asyncio, os, re, sys
body = os.urandom(int(sys.argv[1]))
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, d):
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            a, b = map(int, re.search(rb"bytes=(\d+)-(\d+)", head).groups())
            self.t.write(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n"
                         b'ETag: "e1"\r\nCache-Control: max-age=3600\r\n\r\n' % (b - a + 1, a, b, len(body)))
            self.t.write(memoryview(body)[a : b + 1])
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Future()
asyncio.run(main())
"""


def _head(a: int, b: int) -> bytes:
    """The origin's head for bytes a..b (as ORIGIN writes it)."""
    cr = f"Content-Range: bytes {a}-{b}/{OBJECT}\r\n"
    fields = f'Content-Length: {b - a + 1}\r\n{cr}ETag: "e1"\r\nCache-Control: max-age=3600\r\n\r\n'
    return ("HTTP/1.1 206 Partial Content\r\n" + fields).encode()


def _best(passes: list[float], n: int) -> float:
    return min(passes) / n * 1e6


async def _timed(fn: Callable[[int], Awaitable[object]], n: int, repeats: int) -> float:
    """Least thread CPU per call of `fn` over `repeats` passes of `n` calls (a warm-up pass first)."""
    passes = []
    for r in range(repeats + 1):
        t0 = time.thread_time()
        for i in range(n):
            await fn(i)
        if r:
            passes.append(time.thread_time() - t0)
    return _best(passes, n)


async def _origin_read(port: int, n: int, repeats: int, cache: Path) -> tuple[float, float, list[bytes]]:
    """The node's origin client, and the bare protocol's floor; and one slice's chunks as they came."""
    config = one_origin(f"http://127.0.0.1:{port}", "127.0.0.1:8080", str(cache))  # nothing listens there
    site = config.sites[0]
    client = OriginClient(config.origin)
    await client.start()
    got: list[bytes] = []

    async def fill_read(i: int) -> None:
        a = (i % (OBJECT // MiB)) * MiB
        resp = await client.request(site, "GET", "/o", (("range", f"bytes={a}-{a + MiB - 1}"),))
        got.clear()
        async for chunk in read_chunks(resp):
            got.append(chunk)
        resp.release()

    node = await _timed(fill_read, n, repeats)
    await client.close()
    return node, await _floor(port, n, repeats), list(got)


async def _floor(port: int, n: int, repeats: int) -> float:
    loop = asyncio.get_running_loop()

    class Reader(asyncio.Protocol):
        left = 0
        done: asyncio.Future[None] | None = None

        def data_received(self, data: bytes) -> None:
            self.left -= len(data)
            if self.left <= 0 and self.done is not None:
                self.done.set_result(None)

    transport, proto = await loop.create_connection(Reader, "127.0.0.1", port)

    async def read(i: int) -> None:
        a = (i % (OBJECT // MiB)) * MiB
        head = f"GET /o HTTP/1.1\r\nHost: x\r\nRange: bytes={a}-{a + MiB - 1}\r\n\r\n".encode()
        proto.left, proto.done = MiB + len(_head(a, a + MiB - 1)), loop.create_future()
        transport.write(head)
        await proto.done

    floor = await _timed(read, n, repeats)
    transport.close()
    return floor


async def _fill(chunks: list[bytes], n: int, repeats: int) -> float:
    """A slice's chunks through a Fill to one reader, as a miss reads its own fill."""

    async def one(i: int) -> None:
        fill = Fill("k", 0, 0, MiB)
        kept: list[bytes] = []

        async def reader() -> None:
            async for _ in fill.read(0, 0, MiB):
                pass

        task = asyncio.get_running_loop().create_task(reader())
        await asyncio.sleep(0)
        for chunk in chunks:
            await fill.room()
            fill.feed(chunk, lambda _i, data: kept.append(data))
            await asyncio.sleep(0)  # the reader's turn, as on a node where each chunk is its own read
        fill.finish(lambda _i, _d: None)
        await task

    return await _timed(one, n, repeats)


def _disk(directory: Path, n: int, repeats: int) -> tuple[float, float, float, float]:
    """DiskTier's write of a slice in this thread (a disk thread's work); its checksum, crc32, the staging copy
    alone."""
    tier = DiskTier(directory, 4 * 2**30, threads=1)
    value, staging = os.urandom(MiB), bytearray(MiB)
    puts, tags, crcs, copies = [], [], [], []
    for r in range(repeats):
        t0 = time.thread_time()
        for i in range(n):
            tier._write(f"s{r}-{i}", value, None, False)
        puts.append(time.thread_time() - t0)
        t0 = time.thread_time()
        for _ in range(n):
            tag_of(value)
        tags.append(time.thread_time() - t0)
        t0 = time.thread_time()
        for _ in range(n):
            zlib.crc32(value)
        crcs.append(time.thread_time() - t0)
        t0 = time.thread_time()
        for _ in range(n):
            staging[:] = value
        copies.append(time.thread_time() - t0)
    tier.close()
    return _best(puts, n), _best(tags, n), _best(crcs, n), _best(copies, n)


def _first_touch(chunks: list[bytes], n: int, repeats: int) -> tuple[float, float]:
    """A slice's join kept in fresh memory (a growing tier), and one into memory freed just before."""
    fresh, reused = [], []
    for _ in range(repeats):
        kept = []
        t0 = time.thread_time()
        for _ in range(n):
            kept.append(b"".join(chunks))
        fresh.append(time.thread_time() - t0)
        del kept
        t0 = time.thread_time()
        for _ in range(n):
            b"".join(chunks)
        reused.append(time.thread_time() - t0)
    return _best(fresh, n), _best(reused, n)


async def _run(args: argparse.Namespace, port: int, directory: Path) -> None:
    node, floor, chunks = await _origin_read(port, args.slices, args.repeats, directory / "node")
    print(f"origin read (OriginClient, aiohttp) {node:7.0f} us/slice   bare uvloop Protocol {floor:5.0f}", end="")
    print(f"   ({len(chunks)} chunks, {MiB // len(chunks) // 1024} KiB each)")
    print(f"fill (feed, join, Fill.read)         {await _fill(chunks, args.slices, args.repeats):7.0f} us/slice")
    put, tag, crc, copy = _disk(directory / "disk", args.slices, args.repeats)
    print(f"disk put (DiskTier._write)           {put:7.0f} us/slice   ", end="")
    print(f"checksum {tag:.0f} (zlib.crc32 {crc:.0f}), staging copy {copy:.0f}")
    fresh, reused = _first_touch(chunks, args.slices, args.repeats)
    print(f"join kept in fresh memory            {fresh:7.0f} us/slice   into memory freed before {reused:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=64, help="slices a pass")
    ap.add_argument("--repeats", type=int, default=7, help="passes (the least is shown)")
    args = ap.parse_args()
    b"".join([bytes(4 * MiB)])  # freed at once: glibc then keeps 1 MiB buffers on its heap, as a node soon does
    origin = subprocess.Popen([sys.executable, "-c", ORIGIN, str(OBJECT)], stdout=subprocess.PIPE, text=True)
    try:
        assert origin.stdout is not None
        port = int(origin.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            uvloop.run(_run(args, port, Path(tmp)))
    finally:
        origin.terminate()
        origin.wait()


if __name__ == "__main__":
    main()
