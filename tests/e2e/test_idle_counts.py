"""Every count of work in hand returns to its idle value once the node is idle, whatever faults the work met: a
viewer gone mid-answer (a miss, a memory or disk hit, ranges, a private answer, a pass, a pipelined batch, HTTPS), an
origin that cuts its body, hangs, refuses, answers 5xx or malformed HTTP, a purge that overtakes a fill, requests
refused 503 (max_requests, max_connections, fill memory) and 429, a request body cut, waits for fill memory or a
site's origin connection given up, a prefetch job failing or cancelled. After each fault the node is let go idle,
and each count (tests.e2e.idlecounts) must be exactly its idle value and the fill-memory gauges where they were: a
count left over makes the node look busy for good or refuse work it could do (max_requests, max_connections,
fill_memory and the sites' origin shares are all enforced from these counts). Both paths (the fast path, and
aiohttp's alone); inclusive tiers, and exclusive ones for the faults of fills and hits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from edgecache.config import Listen, Site
from edgecache.core.ratelimit import RateLimiter
from tests.e2e.adminkit import AdminNode, admin_node, node_config
from tests.e2e.idlecounts import disks_settled, gauges, settled, until
from tests.e2e.procs import free_port
from tests.e2e.test_tls import issue, trusting
from tests.origin import Obj, Origin, RawOrigin, RawRequest
from tests.samples import sample_value
from tests.wire import read_answer

MiB = 2**20
BIG = os.urandom(12 * MiB)  # more than a socket's buffers hold: a reader that stops holds the answer up
SMALL = os.urandom(100_000)


def get(path: str, host: str = "video.test", *fields: str, method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *fields]) + "\r\n\r\n").encode()


async def cut_after(port: int, data: bytes, read: int = 64 * 1024) -> None:
    """Send `data`, read `read` bytes of the answer (or until it closes), then reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        got = b""
        try:
            async with asyncio.timeout(10):
                while len(got) < read and (more := await reader.read(read - len(got))):
                    got += more
        except TimeoutError:
            raise AssertionError(got[:300]) from None
    finally:
        reset(writer)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset, as a client killed does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def answered(port: int, data: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(10):
            status, _, body = await read_answer(reader)
        return status, body
    finally:
        writer.close()


def raw_reply(request: RawRequest) -> tuple[bytes, bool]:
    """The raw origin: malformed HTTP, or a body cut short of its Content-Length, by path."""
    if request.path.startswith("/garbage"):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nBad Field\r\n\r\n0123456789", True
    if request.path.startswith("/chunks"):
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=60\r\n\r\n5\r\nabcde\r\nzz\r\n",
            True,
        )
    return b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nCache-Control: max-age=60\r\n\r\n" + b"x" * 5000, True


Fault = Callable[[AdminNode, Origin], Awaitable[None]]


async def client_gone_miss(node: AdminNode, origin: Origin) -> None:
    await cut_after(node.edge.port, get("/big-miss"))


async def client_gone_memory_hit(node: AdminNode, origin: Origin) -> None:
    assert (await answered(node.edge.port, get("/small")))[0] == 200
    await cut_after(node.edge.port, get("/small"), read=100)


async def client_gone_hit(node: AdminNode, origin: Origin) -> None:
    """Stored, then cut: most of it read from disk (the memory tier holds 8 MiB), from open slice files on the fast
    path."""
    assert (await answered(node.edge.port, get("/big-hit"))) == (200, BIG)
    await cut_after(node.edge.port, get("/big-hit"))
    await cut_after(node.edge.port, get("/big-hit"), read=len(BIG) - MiB)


async def client_gone_range(node: AdminNode, origin: Origin) -> None:
    await cut_after(node.edge.port, get("/big-range", "video.test", "Range: bytes=100-9000000"))
    await cut_after(node.edge.port, get("/big-range", "video.test", "Range: bytes=0-10,5000000-11000000"))


async def client_gone_private(node: AdminNode, origin: Origin) -> None:
    await cut_after(node.edge.port, get("/private"))


async def client_gone_pass(node: AdminNode, origin: Origin) -> None:
    await cut_after(node.edge.port, get("/big-pass", "video.test", "Authorization: Basic eDp5"))


async def pipelined_batch_cut(node: AdminNode, origin: Origin) -> None:
    batch = b"".join(get(p) for p in ("/small", "/big-pipe", "/small", "/big-pipe", "/gone-404"))
    await cut_after(node.edge.port, batch, read=200_000)


async def request_body_cut(node: AdminNode, origin: Origin) -> None:
    head = get("/post", "video.test", "Content-Length: 1000000", method="POST")
    await cut_after(node.edge.port, head + b"y" * 1000, read=0)


async def origin_cut(node: AdminNode, origin: Origin) -> None:
    async def cut(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if not request.path.startswith("/cut"):
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60", "ETag": '"c"'})
        resp.content_length = len(BIG)
        await resp.prepare(request)
        await resp.write(BIG[: MiB + 1000])
        assert request.transport is not None
        request.transport.close()
        return resp

    origin.on_request = cut
    try:
        await asyncio.gather(*(answered_or_cut(node, "/cut") for _ in range(3)))
        await answered_or_cut(node, "/cut", "Range: bytes=2000000-2000099")
    finally:
        origin.on_request = None


async def answered_or_cut(node: AdminNode, path: str, *fields: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.edge.port)
    try:
        writer.write(get(path, "video.test", "Connection: close", *fields))
        async with asyncio.timeout(10):
            await reader.read(-1)
    finally:
        writer.close()


async def origin_hangs(node: AdminNode, origin: Origin) -> None:
    """A head that never comes, and a body that stops: both past the read timeout."""
    never = asyncio.Event()

    async def hang(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if request.path == "/hang-head":
            await never.wait()
        if request.path == "/hang-body":
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=60", "ETag": '"h"'})
            resp.content_length = 3 * MiB
            await resp.prepare(request)
            await resp.write(BIG[:100_000])
            await never.wait()
        return None

    origin.on_request = hang
    try:
        status, _ = await answered(node.edge.port, get("/hang-head"))
        assert status == 504
        await answered_or_cut(node, "/hang-body")
    finally:
        origin.on_request = None
        never.set()


async def origin_refuses(node: AdminNode, origin: Origin) -> None:
    """The dead site's origin refuses connections: a 502, and a share that was taken for it given back."""
    for _ in range(2):
        assert (await answered(node.edge.port, get("/small", "dead.test")))[0] == 502


async def origin_5xx(node: AdminNode, origin: Origin) -> None:
    assert (await answered(node.edge.port, get("/five")))[0] == 503
    assert (await answered(node.edge.port, get("/five", "video.test", "Range: bytes=0-9")))[0] == 503


async def origin_malformed(node: AdminNode, origin: Origin) -> None:
    assert (await answered(node.edge.port, get("/garbage", "raw.test")))[0] == 502
    assert (await answered(node.edge.port, get("/chunks", "raw.test")))[0] == 502
    for path in ("/short", "/short2"):  # a body short of its length, before a byte of it went out: a 502
        assert (await answered(node.edge.port, get(path, "raw.test")))[0] == 502


async def purge_during_fill(node: AdminNode, origin: Origin) -> None:
    origin.gate = asyncio.Event()
    try:
        seen = len(origin.seen)
        first = asyncio.ensure_future(answered(node.edge.port, get("/purged")))
        await origin.wait_for_requests(seen + 1)
        second = asyncio.ensure_future(cut_after(node.edge.port, get("/purged"), read=0))
        origin.put("/purged", BIG[: 3 * MiB], etag='"v2"')
        status, _ = await node.call("POST", "/purge", json={"url": "http://video.test/purged"})
        assert status == 200
        origin.gate.set()
        assert (await first) == (200, BIG[: 3 * MiB])
        await second
    finally:
        origin.gate.set()
        origin.gate = None


async def refused_503(node: AdminNode, origin: Origin) -> None:
    shared = node.edge.node.shared
    origin.gate = asyncio.Event()
    held = shared.max_in_flight
    try:
        seen = len(origin.seen)
        first = asyncio.ensure_future(answered(node.edge.port, get("/held")))
        await origin.wait_for_requests(seen + 1)
        shared.max_in_flight = shared.in_flight
        assert (await answered(node.edge.port, get("/small")))[0] == 503
        assert (await answered(node.edge.port, get("/other-miss")))[0] == 503
        shared.max_in_flight = held
        origin.gate.set()
        assert (await first)[0] == 200
    finally:
        shared.max_in_flight = held
        origin.gate.set()
        origin.gate = None


async def refused_429(node: AdminNode, origin: Origin) -> None:
    shared = node.edge.node.shared
    limiter, shared.limiter = shared.limiter, RateLimiter(0.001, 2)
    try:
        statuses = [(await answered(node.edge.port, get(p)))[0] for p in ("/small", "/small", "/small", "/rate")]
        assert statuses == [200, 200, 429, 429]
    finally:
        shared.limiter = limiter


async def joined_then_gone(node: AdminNode, origin: Origin) -> None:
    """Requests that joined a fill held at the origin go away before its head comes."""
    origin.gate = asyncio.Event()
    try:
        seen = len(origin.seen)
        clients = [await asyncio.open_connection("127.0.0.1", node.edge.port) for _ in range(4)]
        clients[0][1].write(get("/joined"))
        async with asyncio.timeout(10):
            await origin.wait_for_requests(seen + 1)
        for _, writer in clients[1:]:
            writer.write(get("/joined"))
        await until(lambda: sum(len(f.expecting) for f in node.edge.node.engine.fills.of(JOINED)) >= 4)
        for _, writer in clients:
            reset(writer)
        origin.gate.set()
    finally:
        origin.gate.set()
        origin.gate = None


JOINED = "videos|video.test|/joined"


def holding(release: asyncio.Event) -> Callable[[web.BaseRequest, Obj | None], Awaitable[web.StreamResponse | None]]:
    """The origin's hook: a /slow path's answer is its head and 100,000 bytes, then a byte every 0.2 s until `release`
    is set, then the rest."""

    async def hold(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if not request.path.startswith("/slow"):
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=60", "ETag": '"s"'})
        resp.content_length = len(BIG)
        await resp.prepare(request)
        sent = 100_000
        await resp.write(BIG[:sent])
        while not release.is_set():  # a byte now and then: the node's read timeout does not end it meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 0.2)
            await resp.write(BIG[sent : sent + 1])
            sent += 1
        await resp.write(BIG[sent:])
        await resp.write_eof()
        return resp

    return hold


async def fill_memory_waits(node: AdminNode, origin: Origin) -> None:
    """A fill holds the whole shared pool; the next fill waits for its share: its client goes away meanwhile, and a
    third waits past its time (503)."""
    release = asyncio.Event()
    origin.on_request = holding(release)
    budget = node.edge.node.engine.budget.shared
    try:
        first = asyncio.ensure_future(cut_after(node.edge.port, get("/slow-fill"), read=50_000))
        await until(lambda: budget.held > 0)
        _, writer = await asyncio.open_connection("127.0.0.1", node.edge.port)
        writer.write(get("/big-miss"))
        await until(lambda: budget.waiting == 1)
        reset(writer)
        assert (await answered(node.edge.port, get("/big-range", "video.test", "Range: bytes=5000000-5000099")))[
            0
        ] == 503
        release.set()
        await first
    finally:
        release.set()
        origin.on_request = None


async def origin_share_waits(node: AdminNode, origin: Origin) -> None:
    """The narrow site holds one origin connection: a request waiting for it goes away, another waits past its
    time (504), and the one holding it is cut."""
    release = asyncio.Event()
    origin.on_request = holding(release)
    pools = [s.connector for s in (node.edge.node.origin._session,)]
    narrow = pools[0].shares._of  # type: ignore[union-attr]
    try:
        first = asyncio.ensure_future(cut_after(node.edge.port, get("/slow-share", "narrow.test"), read=50_000))
        await until(lambda: "narrow" in narrow and narrow["narrow"].held == 1)
        _, writer = await asyncio.open_connection("127.0.0.1", node.edge.port)
        writer.write(get("/big-miss", "narrow.test"))
        await until(lambda: narrow["narrow"].waiting == 1)
        reset(writer)
        assert (await answered(node.edge.port, get("/other-miss", "narrow.test")))[0] == 504
        await first
    finally:
        release.set()
        origin.on_request = None


async def private_reader_stalls(node: AdminNode, origin: Origin) -> None:
    """A private answer's one reader stops reading: its fill waits for it, its connection set aside (not counted
    against the pool nor the site's share); it reads on to the end (counted again, then released); a second one
    stops, and goes."""
    pool = node.edge.node.origin._session.connector  # type: ignore[union-attr]
    for finish in (True, False):
        reader, writer = await asyncio.open_connection("127.0.0.1", node.edge.port)
        try:
            writer.write(get("/private", "video.test", "Connection: close"))
            head = await reader.readuntil(b"\r\n\r\n")
            await until(lambda: len(pool._aside) == 1)  # type: ignore[union-attr]
            if finish:
                async with asyncio.timeout(10):
                    assert (head.split(b" ")[1], await reader.read(-1)) == (b"200", BIG)
        finally:
            reset(writer)


CA = trustme.CA()


async def tls_gone(node: AdminNode, origin: Origin) -> None:
    """HTTPS connections that go in their handshake, before it, or mid-answer, and plain HTTP sent to the port."""
    port = node.edge.ports[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reset(writer)  # nothing sent
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
    await writer.drain()
    reset(writer)
    assert (await answered(port, get("/small")))[0] == 400
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(CA), server_hostname="video.test")
    writer.write(get("/big-hit"))
    await reader.readexactly(64 * 1024)
    reset(writer)


async def refused_at_the_door(node: AdminNode, origin: Origin) -> None:
    """Connections past max_connections: a 503 and a (lingering) close."""
    fast = node.edge.fast
    assert fast is not None
    settings = fast.settings
    fast.settings = replace(settings, max_connections=fast.open)
    try:
        for _ in range(3):
            assert (await answered(node.edge.port, get("/small")))[0] == 503
    finally:
        fast.settings = settings


async def prefetch_faults(node: AdminNode, origin: Origin) -> None:
    """A prefetch job whose URLs fail every way, and one cancelled while its URL's answer trickles in."""
    release = asyncio.Event()
    origin.on_request = holding(release)
    try:
        urls = ["http://video.test/five", "http://raw.test/garbage", "http://raw.test/short", "http://dead.test/small"]
        status, failing = await node.call("POST", "/prefetch", json=[*urls, "http://video.test/big-miss"])
        assert status == 202
        status, held = await node.call("POST", "/prefetch", json=["http://video.test/slow-prefetch"])
        assert status == 202
        await until(lambda: origin.hits["/slow-prefetch"] == 1)
        assert (await node.call("DELETE", f"/prefetch/{held['id']}"))[0] == 200  # type: ignore[call-overload]
        assert (await node.finished(str(failing["id"])))["state"] in ("done", "failed")  # type: ignore[call-overload]
        await until(lambda: not node.jobs._runs)
    finally:
        release.set()
        origin.on_request = None
    jobs = {state: sample_value("edgecache_prefetch_jobs", {"state": state}) for state in ("running", "queued")}
    assert jobs == {"running": 0.0, "queued": 0.0}


FAULTS: list[Fault] = [
    client_gone_miss,
    client_gone_memory_hit,
    client_gone_hit,
    client_gone_range,
    client_gone_private,
    client_gone_pass,
    pipelined_batch_cut,
    request_body_cut,
    origin_cut,
    origin_hangs,
    origin_refuses,
    origin_5xx,
    origin_malformed,
    purge_during_fill,
    refused_503,
    refused_429,
    joined_then_gone,
    fill_memory_waits,
    origin_share_waits,
    private_reader_stalls,
    tls_gone,
    refused_at_the_door,
    prefetch_faults,
]


def put_objects(origin: Origin) -> None:
    for path in ("/big-miss", "/big-hit", "/big-range", "/big-pass", "/big-pipe", "/joined"):
        origin.put(path, BIG)
    for path in ("/small", "/held", "/other-miss", "/rate"):
        origin.put(path, SMALL)
    origin.put("/purged", BIG[: 3 * MiB])
    origin.put("/private", BIG, headers={"Cache-Control": "private"})
    origin.put("/five", SMALL, status=503, headers={"Cache-Control": "no-store"})


# Exclusive tiers (a slice in memory or on disk, spilled to disk when memory evicts it): the faults of fills and
# hits, with a memory tier small enough that they spill.
EXCLUSIVE = [client_gone_miss, client_gone_hit, client_gone_range, origin_cut, purge_during_fill]
CASES = [(f, "inclusive") for f in FAULTS] + [(f, "exclusive") for f in EXCLUSIVE]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize(("fault", "tiers"), CASES, ids=[f"{f.__name__}-{t}" for f, t in CASES])
async def test_every_count_is_back_at_idle_after(
    origin: Origin, tmp_path: Path, fast: bool, fault: Fault, tiers: str
) -> None:
    raw = RawOrigin(raw_reply)
    await raw.start()
    put_objects(origin)
    narrow = Site("narrow", ("narrow.test",), (origin.url,), origin_connections=1)
    dead = Site("dead", ("dead.test",), (f"http://127.0.0.1:{free_port()}",), origin_connections=1)
    cfg = node_config(origin, tmp_path / "c", Site("raw", ("raw.test",), (raw.url,)), narrow, dead)
    videos = replace(cfg.sites[0], tls=issue(CA, tmp_path, "videos", "video.test"))
    cfg = replace(
        cfg,
        sites=(videos, *cfg.sites[1:]),
        tls_listen=(Listen("127.0.0.1", 0),),
        fast_path=fast,
        origin=replace(cfg.origin, read_timeout=1.0, connect_timeout=1.0),
        cache=replace(cfg.cache, memory_bytes=8 * MiB, fill_memory=4 * MiB, tiers=tiers),
    )
    try:
        before = gauges()
        async with admin_node(cfg) as node:
            await fault(node, origin)
            await settled([node.edge], before)
            await disks_settled(node.edge)
    finally:
        await raw.stop()
