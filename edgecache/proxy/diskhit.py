"""A fast-path hit with some slice not in memory: its bytes read from the disk tier's open slice files.

A hit whose pages are cached is answered at once (pread with RWF_NOWAIT into the server's pooled buffers);
anything else becomes a task on the connection (fastpath.FastPath) that opens what it must off the loop, offers
a whole slice to the memory tier now and then, and sends with sendfile or pread a piece at a time, waiting while
the client is not taking the bytes. The connection owns its state (busy, buffered input, hand-off, flow); this
module only reads and writes through it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from edgecache import metrics
from edgecache.core import ranges
from edgecache.core.admit import NOT_CACHED, NOT_HELD
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.status import cache_status_header, miss_cause, with_fetched
from edgecache.errors import OriginError, VersionChanged
from edgecache.proxy import changing, coldmiss, observe, reading, refuse
from edgecache.proxy.heldslices import HELD
from edgecache.proxy.hit import age_text
from edgecache.proxy.prepared import Prepared, head_at
from edgecache.proxy.respond import MAX_CHECKED
from edgecache.proxy.route import Refused
from edgecache.storage.store import SliceFile, slice_name

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

# A disk hit is read and written this much at a time (pread mode): a client reading slowly holds about one piece
# of this process's memory. (256 KiB pieces cost W3 about a fifth more CPU for no RSS the soak could see.)
PIECE = 2**20
# Under TLS every write is encrypted into a buffer of the connection's own (over plain HTTP the transport keeps a
# reference to the shared bytes instead): an answer is written this much at a time there, waiting for the client
# between pieces, so a client that stops reading holds about this much, not a whole answer (2.3 MB measured).
TLS_PIECE = 64 * 1024
_SOCKET_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})
log = logging.getLogger(__name__)


def counters(p: Prepared) -> tuple[Any, Any]:
    """The served-bytes counters of what an answer reads from memory and from disk (observe.tally says which)."""
    return p.tally.memory, p.tally.disk


@dataclass(slots=True)
class _Fetch:
    """A slice in neither tier: its bytes lo..hi-1 come from a fill (proxy.reading), started or joined for it."""

    index: int
    lo: int
    hi: int
    chunks: AsyncGenerator[bytes | memoryview, None] | None = None
    first: bytes | memoryview | None = None  # read before the head went out: the fill's version is the one served
    looked: bool = False  # the disk was looked at for it just now (reading.read_slice need not look again)


@dataclass(slots=True)
class _Open:
    """An open slice file's bytes lo..hi-1 (slice `index`)."""

    file: SliceFile
    index: int
    lo: int
    hi: int


@dataclass(slots=True)
class _Later:
    """A slice past the HELD first: found where it is (memory, disk, or a fill) when the body reaches it."""

    index: int
    lo: int
    hi: int


_InHand = memoryview | _Open | _Fetch  # a slice's source in hand
Source = _InHand | _Later


def answer(conn: FastPath, p: Prepared, raw: bytes, t0: float) -> bool:
    """Some slice is not in memory: read open files' cached pages now, or start a task that can wait.
    False: the connection stops processing for now (as FastPath._answer)."""
    store = conn.server.shared.engine.store
    parts: list[memoryview] = []
    borrowed: list[bytearray] = []
    from_disk = 0
    for name, lo, hi in p.slices:
        data = store.memory_slice(name)
        if data is not None:
            parts.append(memoryview(data)[lo:hi])
            continue
        piece = _read_now(conn, store.open_file_named(name), lo, hi, borrowed)
        if piece is None:  # not open, not all in the page cache, or worth offering to memory: a task
            for buf in borrowed:
                conn.server.give_back(buf)
            return stream(conn, p, raw, t0)
        parts.append(piece)
        from_disk += hi - lo
    counters(p)[1].inc(from_disk)
    conn.send(p, parts, t0, p.hit.last - p.hit.first + 1 - from_disk, now=bool(borrowed))
    if conn.transport is not None and conn.transport.get_write_buffer_size() == 0:
        for buf in borrowed:  # the socket took everything: nothing refers to them any more
            conn.server.give_back(buf)
    return p.keep_alive.persists


def stream(conn: FastPath, p: Prepared, raw: bytes, t0: float) -> bool:
    """An answer of more than HELD slices: read and sent by a task as the client takes it (_from_disk)."""
    conn.busy = True
    task = conn.loop.create_task(refuse.until_head(conn, p, _from_disk(conn, p, raw, t0)))
    task.add_done_callback(conn.done)
    return False


def _read_now(conn: FastPath, f: SliceFile | None, lo: int, hi: int, borrowed: list[bytearray]) -> memoryview | None:
    """Bytes lo..hi-1 of an open slice file if they can be had without waiting (pread mode, pages cached,
    one piece); None sends the request the long way (_from_disk), which can wait, offer the slice to memory,
    or sendfile. Answering a disk hit without a task saves a fifth of its Python time."""
    server = conn.server
    if f is None or server.settings.sendfile or hi - lo > PIECE:
        return None
    if lo == 0 and hi == f.size and server.promote_due(time.monotonic()):
        return None
    buf, got = server.read_cached(f.fd, lo, hi - lo)
    if got != hi - lo:
        server.give_back(buf)
        return None
    borrowed.append(buf)
    return memoryview(buf)[:got]


def not_held(conn: FastPath, p: Prepared, t0: float) -> None:
    """An owner's look-aside (core.lookaside) for an object some slice of which is gone: it is not held here
    whole, and is answered so (admit.NOT_HELD), as the full handler answers it: no viewer's request, not counted.
    A viewer's only-if-cached request for it gets the 504 of nothing stored (admit.NOT_CACHED), counted."""
    hit = p.hit
    req = hit.req
    viewers = parse_cache_control(req.headers).only_if_cached  # a look-aside never carries it (core.forward)
    reply = NOT_CACHED if viewers else NOT_HELD
    refuse.refused(
        conn,
        Refused.keyed(reply, p.method, req.key, req.headers, hit.site.name, p.keep_alive, viewers, hit.viewer),
        t0,
    )


async def _from_disk(conn: FastPath, p: Prepared, raw: bytes, t0: float) -> None:
    """Gather every slice (memory, open file, or opened now off the loop), then send; nothing is sent until
    all are in hand, so a slice gone from disk meanwhile still lets the full handler answer from scratch."""
    hit = p.hit
    shared = conn.server.shared
    sources: list[Source] = []
    held: list[SliceFile] = []
    # The body's bytes as the served-bytes counter takes them (the first fetched ones in _partial too): what an
    # answer cut short is logged with. A miss that joined another's fill was counted as a collapsed wait
    # (coldmiss.settle): its reads count no more (metrics.collapsed, once a request).
    served = metrics.Sources(joined=p.fill is not None and not p.ours)
    metrics.SOURCES.set(served)
    shared.in_flight += 1
    # A fill of the whole object runs while it is read (Engine.unread)
    with shared.engine.reading(hit.req.entry_key):
        if p.expected is not None:  # a reader of its fill now
            p.expected.release()
        try:
            indices = ranges.slice_indices(ranges.ByteRange(hit.first, hit.last), shared.engine.slice_size)
            missing = await _missing_later(conn, p, indices[HELD:])
            if (missing and not hit.fills) or not await _gather(conn, p, indices, missing, sources, held):
                not_held(conn, p, t0)  # a look-aside never fills
                return
            fetches = [s for s in sources if isinstance(s, _Fetch)]
            for later in fetches[1:]:  # read only once the slices before them are sent: their disk look is old by then
                later.looked = False
            partial = await _settled(conn, p, raw, await _partial(conn, p, fetches) if fetches else p)
            if partial is not None:
                await _send_parts(conn, partial, sources, served, t0)
        finally:
            shared.in_flight -= 1
            for f in held:
                f.release()
            for fetch in sources:
                if isinstance(fetch, _Fetch) and fetch.chunks is not None:
                    await fetch.chunks.aclose()


async def _gather(
    conn: FastPath, p: Prepared, indices: range, missing: set[int], sources: list[Source], held: list[SliceFile]
) -> bool:
    """Where each slice of the answer comes from, in order, into `sources` (the files opened for it into `held`):
    the first HELD in hand now, the rest found as the body reaches them. False: a look-aside lacks one."""
    hit = p.hit
    store = conn.server.shared.engine.store
    size = conn.server.shared.engine.slice_size
    for n, index in enumerate(indices):
        base = index * size
        lo, hi = max(hit.first, base) - base, min(hit.last + 1, base + hit.meta.slice_length(index)) - base
        if n >= HELD:
            sources.append(_Fetch(index, lo, hi) if index in missing else _Later(index, lo, hi))
            continue
        data = store.slice_from_memory(hit.req.entry_key, hit.meta, index)
        if data is not None:
            sources.append(memoryview(data)[lo:hi])
            continue
        if p.status in observe.FETCHED and p.fill is not None and p.fill.covers(index):  # its own fill brings it
            sources.append(_Fetch(index, lo, hi))
            continue
        opened = store.open_file(hit.req.entry_key, hit.meta, index)
        got = opened if opened is not None else await store.open_slice(hit.req.entry_key, hit.meta, index)
        if got is None and hit.fills:  # in neither tier: fetched for this answer (partial)
            sources.append(_Fetch(index, lo, hi, looked=True))
            continue
        if got is None:
            return False
        if isinstance(got, bytes):
            sources.append(memoryview(got)[lo:hi])
            continue
        held.append(got.acquire())
        whole = lo == 0 and hi == hit.meta.slice_length(index)
        if whole and conn.server.may_promote(time.monotonic()):
            try:
                data = await conn.loop.run_in_executor(None, os.pread, got.fd, hi, 0)
            except OSError:  # the disk failing under it: sent from the file below, or fetched if that fails
                data = b""
            if len(data) == hi:  # offered to the memory tier, which decides whether to keep it
                store.took_from_disk(hit.req.entry_key, hit.meta.slice_version, index, data)
                sources.append(memoryview(data))
                continue
        sources.append(_Open(got, index, lo, hi))
    return True


async def _settled(conn: FastPath, p: Prepared, raw: bytes, partial: Prepared | OriginError | None) -> Prepared | None:
    """The answer to send once its first fetched slice (if any) has begun; None where it is not sent here."""
    if isinstance(partial, Prepared):
        return partial
    if isinstance(partial, VersionChanged):
        await changing.again(conn, p, raw, partial)
        return None  # decided again (a new version, a purge, a peer's cut), or out of fills, relayed (core.churn)
    if isinstance(partial, OriginError) and not isinstance(partial, VersionChanged):
        # The fill it read (its own, one it joined, or its slice's) failed before the first byte: the full handler's
        # 502, from the same fill. Handed off, the request asked the origin again, and waited for a second timeout.
        coldmiss.failed_fill(conn, p, partial)
        return None
    # Nothing to send from here (_partial: an empty first slice, a head that cannot be encoded)
    conn.buf = raw + conn.buf
    coldmiss.adopt(conn, p)  # a miss's ends as the full handler's would, from the same fill
    conn.hand_off()
    return None


async def _missing_later(conn: FastPath, p: Prepared, later: range) -> set[int]:
    """Which slices past the HELD first are in neither tier now, so that the head says PARTIAL when any byte comes
    from the origin (as serving._completed has it). A miss's are read from its fill anyway (_Later)."""
    if not later or p.status in observe.FETCHED:
        return set()
    hit = p.hit
    missing = await conn.server.shared.engine.store.missing(hit.req.entry_key, hit.meta, list(later[:MAX_CHECKED]))
    return set(missing)


async def _partial(conn: FastPath, p: Prepared, fetches: list[_Fetch]) -> Prepared | OriginError | None:
    """The answer once some of its slices are to be fetched: PARTIAL (fwd=partial), its miss counted by cause.
    The first fetched slice's first bytes are read before the head is sent, so that a new version at the origin
    or a failure (returned) is answered as such; nothing is mixed. None: the full handler answers it."""
    hit = p.hit
    engine = conn.server.shared.engine
    first = fetches[0]
    last = hit.last // engine.slice_size
    first.chunks = reading.read_slice(
        engine, hit.req, hit.meta, first.index, first.lo, first.hi, last, p.fill, first.looked
    )
    try:
        first.first = await anext(first.chunks)
    except OriginError as exc:
        return exc
    except StopAsyncIteration:
        return None
    return with_fetches(conn, p, [f.index for f in fetches])


def with_fetches(conn: FastPath, p: Prepared, indices: list[int]) -> Prepared | None:
    """`p` once the slices `indices` are to be fetched for it: PARTIAL, its miss counted by cause (a slice the
    cache dropped: evicted), as serving._completed has it; None when its head cannot be encoded."""
    status = with_fetched(p.status, True)
    if status is p.status:  # a miss's answer says so already (coldmiss)
        return p
    hit, engine = p.hit, conn.server.shared.engine
    version = hit.meta.slice_version
    evicted = any(engine.ghosts.slice_dropped(slice_name(hit.req.entry_key, version, i)) for i in indices)
    cause = miss_cause(uncacheable=False, expired=False, evicted=evicted, failover=False, moved=False).value
    fields = [(k, cache_status_header(status) if k == "Cache-Status" else v) for k, v in hit.headers]
    if p.age_span is not None:  # hit.headers' Age is its decision's; the answer's is the clock's (head_at)
        age = age_text(hit, time.time()).decode()
        fields = [("Age", age) if k == "Age" else (k, v) for k, v in fields]
    return conn.server.decider.restated(p, replace(hit, headers=fields), status, cause)


async def _send_parts(conn: FastPath, p: Prepared, sources: list[Source], served: metrics.Sources, t0: float) -> None:
    transport = conn.transport
    if transport is None:
        return
    transport.write(head_at(p, time.time()))
    conn.sent(p, t0)
    try:
        for source in sources:
            _still_there(conn, transport)
            if isinstance(source, _Later):
                await _send_later(conn, transport, p, source)
            else:
                await _send_one(conn, transport, p, source)
            await pace(conn)
    except BaseException:
        conn.finished(p, served.cache + served.origin + served.peer, t0, cut=True, asked=served.addrs)
        raise
    conn.finished(p, served.cache + served.origin + served.peer, t0, asked=served.addrs)


async def _send_one(conn: FastPath, transport: asyncio.Transport, p: Prepared, source: _InHand) -> int:
    """One slice's bytes of the answer, from memory, a fill, or an open file (the rest of the slice fetched, same
    version, should the disk fail under it); how many were sent."""
    memory, disk = counters(p)
    if isinstance(source, memoryview):
        await _write(conn, transport, source)
        memory.inc(len(source))
        return len(source)
    if isinstance(source, _Fetch):
        return await _send_fetched(conn, transport, p, source)
    reached = await _send_file(conn, transport, source.file, source.lo, source.hi)
    disk.inc(reached - source.lo)
    if reached < source.hi:
        return reached - source.lo + await _fetched_now(conn, transport, p, _Fetch(source.index, reached, source.hi))
    return reached - source.lo


def _put(conn: FastPath, transport: asyncio.Transport, data: bytes | memoryview) -> None:
    """Write a piece of the body, unless its client has gone meanwhile (a read or a fetch was awaited): uvloop
    raises RuntimeError for a write to a closed transport, and the connection's end logged it as a fault."""
    _still_there(conn, transport)
    transport.write(data)


async def _write(conn: FastPath, transport: asyncio.Transport, data: memoryview) -> None:
    """All of `data`: at once over plain HTTP; a TLS_PIECE at a time under TLS, waiting for the client between."""
    if not conn.tls:
        _put(conn, transport, data)
        return
    for at in range(0, len(data), TLS_PIECE):
        _put(conn, transport, data[at : at + TLS_PIECE])
        await pace(conn)


async def _send_later(conn: FastPath, transport: asyncio.Transport, p: Prepared, later: _Later) -> int:
    """A slice past the HELD first, from wherever it is when the body reaches it; one gone from both tiers since
    is fetched, same version (never for a look-aside: the connection is cut, as the body cannot be whole)."""
    hit, store = p.hit, conn.server.shared.engine.store
    data = store.slice_from_memory(hit.req.entry_key, hit.meta, later.index)
    got = data if data is not None else store.open_file(hit.req.entry_key, hit.meta, later.index)
    if got is None:
        got = await store.open_slice(hit.req.entry_key, hit.meta, later.index)
    if isinstance(got, bytes):
        return await _send_one(conn, transport, p, memoryview(got)[later.lo : later.hi])
    if got is None:
        if not hit.fills:
            raise OriginError(f"slice {later.index} is no longer held for a look-aside")
        return await _fetched_now(conn, transport, p, _Fetch(later.index, later.lo, later.hi, looked=True))
    got.acquire()
    try:
        return await _send_one(conn, transport, p, _Open(got, later.index, later.lo, later.hi))
    finally:
        got.release()


async def _fetched_now(conn: FastPath, transport: asyncio.Transport, p: Prepared, fetch: _Fetch) -> int:
    """_send_fetched for a fetch made as the body reached it (in no list that _from_disk closes)."""
    try:
        return await _send_fetched(conn, transport, p, fetch)
    finally:
        if fetch.chunks is not None:
            await fetch.chunks.aclose()


async def _send_fetched(conn: FastPath, transport: asyncio.Transport, p: Prepared, fetch: _Fetch) -> int:
    """A fetched slice's bytes as they arrive (reading.read_slice counts them as served from where they came);
    a failure now cuts the connection (FastPath.done), never a short body passed as whole."""
    hit, engine = p.hit, conn.server.shared.engine
    if fetch.chunks is None:
        last = hit.last // engine.slice_size
        fetch.chunks = reading.read_slice(
            engine, hit.req, hit.meta, fetch.index, fetch.lo, fetch.hi, last, p.fill, fetch.looked
        )
    sent = 0
    if fetch.first is not None:
        _put(conn, transport, fetch.first)
        sent += len(fetch.first)
    async for chunk in fetch.chunks:
        _put(conn, transport, chunk)
        sent += len(chunk)
        await pace(conn)
    if sent != fetch.hi - fetch.lo:
        raise OriginError(f"slice {fetch.index} gave {sent} bytes, expected {fetch.hi - fetch.lo}")
    return sent


async def pace(conn: FastPath) -> None:
    """Between two pieces of an answer: wait while the client is not taking them. Under TLS, let the loop run in any
    case: uvloop's TLS transport drops every write after a TCP FIN (and logs a WARNING per write past the fifth)
    while it says it is open, until connection_lost, which comes only from the loop."""
    if conn.write_paused:
        await conn.drain()  # raises once the client is gone, or cut for not reading (write_timeout)
    elif conn.tls:
        await asyncio.sleep(0)


def _still_there(conn: FastPath, transport: asyncio.Transport) -> None:
    """A closed transport drops what it is given (or uvloop raises RuntimeError): a fill read for nobody would
    run on, and the connection's end logged a fault."""
    if transport.is_closing() or conn.transport is not transport:
        raise ConnectionResetError("the client went away")


async def _send_file(conn: FastPath, transport: asyncio.Transport, f: SliceFile, lo: int, hi: int) -> int:
    """Bytes lo..hi-1 of an open slice file: sendfile while the socket takes them (when configured and the
    transport has nothing queued, so order is kept), then pread without waiting on the disk, then pread
    in a thread for pages not in the page cache. Where the bytes sent end: before `hi` if the disk failed."""
    try:
        return await _send_from(conn, transport, f, lo, hi)
    except _ReadFailed as exc:
        # The disk tier takes the disk out of service on its own checks; this answer goes on from the origin.
        log.warning("fast path: slice file unreadable at %d: %s; fetching the rest", exc.at, exc.__cause__)
        return exc.at


class _ReadFailed(Exception):
    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


async def _send_from(conn: FastPath, transport: asyncio.Transport, f: SliceFile, lo: int, hi: int) -> int:
    if conn.sock_fd >= 0 and conn.server.settings.sendfile:
        while lo < hi and transport.get_write_buffer_size() == 0:
            # sendfile writes to the socket's number, not through the transport: once the transport is closing
            # its socket may be closed and that number given to the next connection accepted, which would get
            # these bytes. (A closed transport says its buffer is empty.)
            if transport.is_closing() or conn.transport is not transport:
                raise ConnectionResetError("the client went away")
            try:
                sent = os.sendfile(conn.sock_fd, f.fd, lo, hi - lo)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _SOCKET_GONE:
                    raise
                raise _ReadFailed(lo) from exc
            if sent <= 0:
                break
            lo += sent
    while lo < hi:
        # A piece at a time, waiting while the transport holds more than its high-water mark (see PIECE).
        n = min(hi - lo, TLS_PIECE if conn.tls else PIECE)
        buf, got = conn.server.read_cached(f.fd, lo, n)
        if got <= 0:
            conn.server.give_back(buf)
            try:
                data = await conn.loop.run_in_executor(None, os.pread, f.fd, n, lo)
            except OSError as exc:
                raise _ReadFailed(lo) from exc
            if not data:
                raise _ReadFailed(lo) from OSError(f"slice file ended at {lo}, expected {hi}")
            _put(conn, transport, data)
            lo += len(data)
        else:
            _put(conn, transport, memoryview(buf)[:got])
            lo += got
            if transport.get_write_buffer_size() == 0:
                # The socket took it all, so the transport holds no reference to the buffer: reuse it.
                conn.server.give_back(buf)
        await pace(conn)
    return lo
