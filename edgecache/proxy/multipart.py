"""A multipart Range answered on the fast path (RFC 9110 14.6): the parts lookup.find_hit() laid out with their
boundary (respond.multipart), each read from wherever its bytes are (reading.read_range: memory, disk, or a fill
for a slice in neither tier), under the full handler's rules for a Range that would cost the origin far more
than it serves (serving.multipart_passes: passed through, proxy.passing) and for a PARTIAL answer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from edgecache.core import ranges
from edgecache.core.status import CacheStatus, MissCause, of_fill
from edgecache.errors import OriginError, VersionChanged
from edgecache.proxy import changing, coldmiss, diskhit, passing, reading, refuse
from edgecache.proxy.lookup import Pass
from edgecache.proxy.prepared import Prepared, head_at
from edgecache.proxy.respond import answer_slices, probed_slices
from edgecache.proxy.serving import first_fetched, multipart_passes
from edgecache.proxy.uncached import write

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

Chunk = bytes | memoryview


def answer(conn: FastPath, p: Prepared, raw: bytes, t0: float) -> bool:
    """A HEAD's answer at once; a GET's by a task that can wait. False: the connection stops processing for now
    (as FastPath._answer)."""
    if p.method == "HEAD":
        conn.send(p, [], t0, 0)
        return p.keep_alive.persists
    conn.busy = True
    conn.loop.create_task(refuse.until_head(conn, p, _send(conn, p, raw, t0))).add_done_callback(conn.done)
    return False


async def _send(conn: FastPath, p: Prepared, raw: bytes, t0: float) -> None:
    """Look at which slices the parts need (a look-aside with one gone is not held; a costly Range is passed
    through), then send the head once the first part's first bytes are in hand, and the parts as the client takes
    them. A failure before the head leaves the request to the full handler, which starts again; after it, the
    connection is cut (FastPath.done): never a short body passed as whole."""
    shared = conn.server.shared
    engine, hit = shared.engine, p.hit
    layout = hit.parts
    assert layout is not None
    spans = ranges.Multi(tuple(part for _, part in layout.parts))
    if await multipart_passes(engine, hit.req, hit.meta, spans):
        if not hit.fills:  # a look-aside, or only-if-cached: never passed to the origin
            diskhit.not_held(conn, p, t0)
            return
        if p.fill is not None:
            p.fill.abandon()  # a miss's fill, read no more (the full handler lets it go too)
        await passing.carry_out(conn, _passed(p), t0)
        return
    shared.in_flight += 1
    try:
        needed = answer_slices(p.method, hit.req.headers, hit.meta, engine.slice_size)
        missing = await engine.store.missing(hit.req.entry_key, hit.meta, needed)
        if missing and not hit.fills:  # a look-aside never fills
            diskhit.not_held(conn, p, t0)
            return
        answered = diskhit.with_fetches(conn, p, missing) if missing else p
        async with contextlib.aclosing(_body(conn, p, layout)) as chunks:
            try:  # the first fetched slice's first bytes, the first part's preamble and first bytes: a failure
                # now is not yet the client's (a stored first part would have gone out before a new version met)
                if missing:
                    probes = probed_slices(p.method, hit.req.headers, hit.meta, engine.slice_size, needed, missing)
                    await first_fetched(engine, hit.req, hit.meta, probes, p.fill)
                started = [await anext(chunks), await anext(chunks)]
            except VersionChanged as exc:
                await changing.again(conn, p, raw, exc)
                return  # decided again (a new version, or a purge), or out of fills, relayed (core.churn)
            except OriginError as exc:  # the fill failed: the full handler's 502/504, not a second fill (diskhit)
                coldmiss.failed_fill(conn, p, exc)
                return
            if answered is None:
                _give_back(conn, p, raw)
                return
            await _write(conn, answered, started, chunks, t0)
    finally:
        shared.in_flight -= 1


def _passed(p: Prepared) -> Pass:
    """The pass-through of a costly multipart Range: a miss of its own (EXPIRED when it replaced a stale entry), its
    cause as the answer it replaces had it, as serving.serve and serve_fill pass it through."""
    hit = p.hit
    status = of_fill(p.status is CacheStatus.EXPIRED)
    evicted, moved = p.cause == MissCause.EVICTED, p.cause == MissCause.RING_MOVED
    failover = hit.failover or p.cause == MissCause.PEER_DOWN
    return Pass(hit.req, status, p.method, p.keep_alive, hit.viewer, evicted, failover, moved=moved)


def _give_back(conn: FastPath, p: Prepared, raw: bytes) -> None:
    """The full handler answers the request from scratch (a miss's with its fill: coldmiss.adopt)."""
    conn.buf = raw + conn.buf
    coldmiss.adopt(conn, p)
    conn.hand_off()


async def _body(conn: FastPath, p: Prepared, layout: ranges.MultipartLayout) -> AsyncGenerator[Chunk, None]:
    engine, hit = conn.server.shared.engine, p.hit
    for preamble, part in layout.parts:
        yield preamble
        async for chunk in reading.read_range(engine, hit.req, hit.meta, part.first, part.last, p.fill):
            yield chunk
    yield layout.epilogue


async def _write(
    conn: FastPath, p: Prepared, started: list[Chunk], chunks: AsyncGenerator[Chunk, None], t0: float
) -> None:
    transport = conn.transport
    if transport is None:
        return
    transport.writelines([head_at(p, time.time()), *started])
    conn.sent(p, t0)
    nbytes = sum(len(x) for x in started)
    try:
        async for chunk in chunks:
            await diskhit.pace(conn)
            write(conn, chunk)  # raises once the client is gone: the parts left are not read for nobody
            nbytes += len(chunk)
    except BaseException:
        conn.finished(p, nbytes, t0, cut=True)
        raise
    conn.finished(p, nbytes, t0)
