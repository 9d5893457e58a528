"""Several workers on one disk revalidate an expired copy with one conditional request between them.

Each test holds a keep-alive connection to each worker (which worker accepted a connection is read from /proc),
so that what one worker did and the other did not is asked of each in turn, not left to the kernel's spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from edgecache.storage.leases import LEASE_SECONDS
from tests.e2e.procs import descendants, edge_process, free_port
from tests.e2e.test_operations import metric
from tests.e2e.test_watchdog import metrics_until
from tests.e2e.test_workers import DATA, NEVER_LAPSES, READY, MiB, two_workers
from tests.origin import Origin

Answer = tuple[int, dict[str, str], bytes]  # Conn.get's: status, fields, body

BODY = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
LEFT = 3  # seconds of freshness each answer of the origin leaves (its Age against its max-age)
REVALIDATED = "edgecache; fwd=stale; fwd-status=304"
FIELDS = {"Cache-Control": "public, max-age=3600", "Age": str(3600 - LEFT)}
WHICH = b"which worker? " * 100  # asked of each new connection to learn its worker (one_per_worker), never timed


async def held_by_both(a: Conn, b: Conn, path: str, expected: bytes = BODY) -> float:
    """`path` asked of each worker in turn, the first filling it and the other finding it on the disk, and the time
    then: the copy's LEFT seconds of freshness run from here. Asked while the workers were told apart (up to 64
    connections, each looked up in /proc), it expired before the second worker had it on a loaded machine, and
    that worker's first request revalidated it: 2 origin requests, not 1."""
    for conn in (a, b):
        status, _, body = await conn.get(path)
        assert (status, body) == (200, expected)
    return time.monotonic()


@dataclass
class Conn:
    """A keep-alive connection to one worker."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int

    async def get(self, path: str, extra: str = "", begun: asyncio.Event | None = None) -> Answer:
        """`begun`: set once the body's first slice came. A copy's metadata is on the shared disk before a byte of
        its body is sent (Engine._take_head writes it first), so another worker's request made then finds the copy."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\n{extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        length, body = int(fields["content-length"]), b""
        if begun is not None:
            body = await self.reader.readexactly(min(MiB, length))
            begun.set()
        body += await self.reader.readexactly(length - len(body))
        return int(lines[0].split()[1]), fields, body


def accepted_by(edge_port: int, client_port: int, pids: set[int]) -> int:
    """Which of `pids` accepted the connection from `client_port` to `edge_port` on 127.0.0.1 (read from /proc)."""
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rpartition(":")[2], 16) for f in fields[1:3])
        if (local, remote) == (edge_port, client_port):
            inode = f"socket:[{fields[9]}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == inode for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    raise AssertionError(f"no process of {pids} accepted the connection from port {client_port}")


@contextlib.asynccontextmanager
async def one_per_worker(port: int, parent: int, path: str, expected: bytes = BODY) -> AsyncIterator[list[Conn]]:
    """A connection to each of the node's two workers, each having asked for `path` once (answered `expected`)."""
    found: dict[int, Conn] = {}
    opened: list[asyncio.StreamWriter] = []
    try:
        for _ in range(64):  # new connections until the kernel gave one to each worker
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(writer)
            conn = Conn(reader, writer, 0)
            status, _, body = await conn.get(path)  # answered: the worker has accepted it
            assert (status, body) == (200, expected)
            conn.pid = accepted_by(port, writer.get_extra_info("sockname")[1], descendants(parent))
            found.setdefault(conn.pid, conn)
            if len(found) == 2:
                break
        assert len(found) == 2, "the kernel gave every connection to one worker"
        yield list(found.values())
    finally:
        for writer in opened:
            writer.close()


@contextlib.asynccontextmanager
async def each_worker(
    tmp_path: Path, origin: Origin, path: str, expected: bytes = BODY, pairs: int = 2, lease: float = LEASE_SECONDS
) -> AsyncIterator[tuple[int, aiohttp.ClientSession, list[tuple[Conn, Conn]]]]:
    """A two-worker node (cache.lease `lease`) with `pairs` connections to each worker (one_per_worker, `pairs`
    times): its admin port, a session, and the pairs, each ordered by worker pid (the first of each pair on one
    worker, the second on the other)."""
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, lease)
    async with (
        edge_process("serve", "--config", str(cfg), ready=READY) as proc,
        aiohttp.ClientSession() as s,
        contextlib.AsyncExitStack() as stack,
    ):
        made = [await stack.enter_async_context(one_per_worker(port, proc.pid, path, expected)) for _ in range(pairs)]
        ordered = [sorted(pair, key=lambda conn: conn.pid) for pair in made]
        yield admin, s, [(a, b) for a, b in ordered]


def holding_304s(origin: Origin) -> asyncio.Event:
    """An event that, cleared, holds the origin's answers to conditional requests until it is set again."""
    released = asyncio.Event()
    released.set()

    async def hold(request: web.BaseRequest, _obj: object) -> None:
        if request.headers.get("If-None-Match"):
            await released.wait()

    origin.on_request = hold
    return released


def conditional(origin: Origin, path: str) -> int:
    return sum(1 for x in origin.seen if x.path == path and x.headers.get("If-None-Match") == '"v1"')


async def collapsed(s: aiohttp.ClientSession, admin: int) -> float:
    """The node's edgecache_collapsed_waits_total: requests that waited for another's origin request."""
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        return metric(await r.text(), "edgecache_collapsed_waits_total")


async def b_waits_on_a(
    s: aiohttp.ClientSession,
    admin: int,
    origin: Origin,
    path: str,
    asks: tuple[Callable[[], Awaitable[Answer]], Callable[[], Awaitable[Answer]]],
    go: asyncio.Event,
    started: Callable[[], Awaitable[bool]] | None = None,
) -> list[Answer | BaseException]:
    """Worker A's request (asks[0]) until it reaches the origin for `path` (or `started` says it has begun), then
    worker B's (asks[1]) until B waits on A's origin request (edgecache_collapsed_waits_total) or asks the origin
    too; `go`, which releases the origin's answer to A, is set however that ends. Both answers, or their errors."""
    waits = await collapsed(s, admin)
    first = asyncio.ensure_future(asks[0]())
    try:
        async with asyncio.timeout(20):
            while not (await started() if started is not None else origin.hits[path] > 0):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            second = asyncio.ensure_future(asks[1]())
            while await collapsed(s, admin) == waits and origin.hits[path] == 1:  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.02)
    finally:
        go.set()
    async with asyncio.timeout(40):
        return await asyncio.gather(first, second, return_exceptions=True)


async def test_an_expired_copy_is_revalidated_once_for_every_worker(origin: Origin, tmp_path: Path) -> None:
    """A copy expires; each worker held its metadata in memory and sent its own conditional request when it was
    next asked, though the other had just revalidated it (the 304's refreshed metadata was on the shared disk): N
    workers, N origin requests per expiry. A worker revalidating a copy reads what the disk holds of it first, and
    while another worker's revalidation is in flight it waits for that one's answer (a lease on the disk).

    The answer read from the other worker's revalidation is told as a request that joined that revalidation in its
    own worker is (`fwd=stale; fwd-status=304`), never `hit`: the copy was stale, and was served once validated."""
    origin.put("/e.bin", BODY, etag='"v1"', headers=FIELDS)
    origin.put("/which", WHICH)
    released = holding_304s(origin)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, NEVER_LAPSES)  # the 304s are held below
    async with (
        edge_process("serve", "--config", str(cfg), ready=READY) as proc,
        aiohttp.ClientSession() as s,
        one_per_worker(port, proc.pid, "/which", WHICH) as (a, b),
    ):
        filled = await held_by_both(a, b, "/e.bin")
        assert origin.hits["/e.bin"] == 1  # both workers hold the copy's metadata now

        # One after the other: the second worker finds the first's revalidation on the disk.
        await asyncio.sleep(filled + LEFT + 0.2 - time.monotonic())  # the copy expires by the clock, nothing else
        status, fields, body = await a.get("/e.bin")
        assert (status, body, fields["cache-status"]) == (200, BODY, "edgecache; fwd=stale; fwd-status=304")
        revalidated = time.monotonic()
        status, fields, body = await b.get("/e.bin")
        # Revalidated by the other worker's request, the one the origin saw: told as that revalidation's joiners are.
        assert (status, body, fields["cache-status"]) == (200, BODY, REVALIDATED)
        assert conditional(origin, "/e.bin") == 1

        # At once: the second worker's request comes while the first's revalidation waits for the origin.
        await asyncio.sleep(revalidated + LEFT + 0.2 - time.monotonic())
        released.clear()
        try:
            first = asyncio.ensure_future(a.get("/e.bin"))
            await origin.wait_for_requests(len(origin.seen) + 1)
            waits = await collapsed(s, admin)
            second = asyncio.ensure_future(b.get("/e.bin"))
            async with asyncio.timeout(10):  # (another process: polled) until it waits, or sent its own
                while await collapsed(s, admin) == waits and conditional(origin, "/e.bin") < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            released.set()
        answers = [(st, f["cache-status"], bd) for st, f, bd in await asyncio.gather(first, second)]
        assert answers == [(200, REVALIDATED, BODY), (200, REVALIDATED, BODY)]
        assert conditional(origin, "/e.bin") == 2

        def revalidated(seen: str) -> float:
            return metric(seen, "edgecache_requests_total", cache_status="revalidated")

        # A worker counts an answer as it ends, and the count reaches the files the admin listener reads on that
        # worker's next turn of its loop (metricturn): read at once, the last one was missing on a loaded machine.
        await metrics_until(admin, lambda seen: revalidated(seen) >= 4, "4 revalidated answers")
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            assert revalidated(await r.text()) == 4  # both answers of both rounds
        assert origin.hits["/e.bin"] == 3


async def test_a_revalidation_a_killed_worker_held_is_asked_again_at_once(origin: Origin, tmp_path: Path) -> None:
    """The worker whose revalidation the other waits for is killed before the origin answers: its lease names its
    process, and the waiting worker asks the origin itself at once: the lease never lapses here (NEVER_LAPSES)."""
    origin.put("/k.bin", BODY, etag='"v1"', headers=FIELDS)
    origin.put("/which", WHICH)
    released = holding_304s(origin)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin, NEVER_LAPSES)
    async with (
        edge_process("serve", "--config", str(cfg), ready=READY) as proc,
        aiohttp.ClientSession() as s,
        one_per_worker(port, proc.pid, "/which", WHICH) as (a, b),
    ):
        filled = await held_by_both(a, b, "/k.bin")
        assert origin.hits["/k.bin"] == 1

        await asyncio.sleep(filled + LEFT + 0.2 - time.monotonic())  # the copy expires by the clock, nothing else
        released.clear()
        try:
            doomed = asyncio.ensure_future(a.get("/k.bin"))
            await origin.wait_for_requests(len(origin.seen) + 1)
            waits = await collapsed(s, admin)
            second = asyncio.ensure_future(b.get("/k.bin"))
            async with asyncio.timeout(10):  # (another process: polled) until it waits
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            os.kill(a.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await doomed
        finally:
            released.set()
        async with asyncio.timeout(30):  # a hang's bound only: a lease not let go would hold for an hour
            status, fields, body = await second
        assert (status, body, fields["cache-status"]) == (200, BODY, REVALIDATED)
        assert conditional(origin, "/k.bin") == 2  # the killed worker's, then the other's own


async def test_a_new_answer_that_varies_otherwise_is_served_by_every_worker(origin: Origin, tmp_path: Path) -> None:
    """A no-cache request in one worker brought the origin's new answer, which Varies where the old one did not:
    stored under another entry key, it was told to no other worker (only a copy stored over the same key was), and
    the other kept serving the old copy from the record and metadata it held, until it expired."""
    old, new = b"old " * 20_000, b"new " * 20_000
    origin.put("/v.bin", old, etag='"v1"')
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    async with (
        edge_process("serve", "--config", str(cfg), ready=READY) as proc,
        one_per_worker(port, proc.pid, "/v.bin", old) as (a, b),
    ):
        assert origin.hits["/v.bin"] == 1  # both workers hold the old copy
        origin.put("/v.bin", new, etag='"v2"', headers={"Cache-Control": "public, max-age=3600", "Vary": "Accept"})
        status, fields, body = await a.get("/v.bin", "Cache-Control: no-cache\r\n")
        assert (status, fields["etag"], body) == (200, '"v2"', new)
        answers = [await conn.get("/v.bin") for conn in (b, a, b)]
        assert [(st, f["etag"], bd) for st, f, bd in answers] == [(200, '"v2"', new)] * 3
        # v2 fetched whole once, by the no-cache request; the other worker may find its slice not yet on the disk and
        # fetch that slice again (fwd=partial, the same copy's bytes), never the object.
        assert [x.headers.get("If-None-Match") for x in origin.seen] == [None, '"v1"'] + [None] * (len(origin.seen) - 2)
        assert all(x.headers.get("Range") == "bytes=0-1048575" for x in origin.seen[2:]), origin.seen


async def test_two_revalidations_in_one_worker_hold_one_lease_each(origin: Origin, tmp_path: Path) -> None:
    """Two fills of one worker revalidate one expired copy (ranges in two slices: a fill each). The lease named the
    worker alone: the second took it again, and the first, failed by the origin, dropped it for both, so the other
    worker asked the origin too while the second's revalidation was in flight. Each take has its owner now: the
    second fill waits for the first as another worker would, and whoever asks next holds the lease alone."""
    data = DATA[: 6 * MiB]
    origin.put("/s.bin", data, etag='"v1"', headers=FIELDS)
    released = asyncio.Event()

    async def first_fails(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if not request.headers.get("If-None-Match"):
            return None
        if conditional(origin, "/s.bin") == 1:
            return web.Response(status=503, text="busy\n")
        await released.wait()
        return None

    origin.on_request = first_fails
    origin.put("/which", WHICH)
    # The second revalidation is held while the test polls: no lease lapses here (NEVER_LAPSES), or the other worker
    # asks the origin too once it lapsed, as promised.
    async with each_worker(tmp_path, origin, "/which", WHICH, lease=NEVER_LAPSES) as (admin, s, [(a1, b), (a2, _)]):
        filled = await held_by_both(a1, b, "/s.bin", data)
        assert origin.hits["/s.bin"] == 1
        await asyncio.sleep(filled + LEFT + 0.2 - time.monotonic())  # the copy expires by the clock, nothing else
        spans = [(0, 99), (5 * MiB, 5 * MiB + 99)]
        try:
            ones = [asyncio.ensure_future(c.get("/s.bin", f"Range: bytes={lo}-{hi}\r\n")) for c, (lo, hi) in
                    zip((a1, a2), spans, strict=True)]  # fmt: skip
            async with asyncio.timeout(10):
                await asyncio.wait(ones, return_when=asyncio.FIRST_COMPLETED)  # the one the origin failed: 503
                # (another process: polled) until the other has asked, and is held
                while conditional(origin, "/s.bin") < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                waits = await collapsed(s, admin)
                other = asyncio.ensure_future(b.get("/s.bin", "Range: bytes=0-99\r\n"))
                while await collapsed(s, admin) == waits and conditional(origin, "/s.bin") < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        finally:
            released.set()
        async with asyncio.timeout(10):
            answers = [(st, bd) for st, _, bd in await asyncio.gather(*ones, other)]
        wanted = [(206, data[lo : hi + 1]) for lo, hi in spans]
        # The fill the origin failed passes its 503 on (no stale-if-error); every other answer is the copy's bytes.
        assert all(got in (want, (503, b"busy\n")) for got, want in zip(answers, wanted, strict=False))
        assert answers[2] == (206, data[:100])
        assert conditional(origin, "/s.bin") == 2  # the one that failed, then one for both workers
