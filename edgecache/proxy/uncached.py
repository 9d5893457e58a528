"""A miss whose answer is not stored (private, no-store, or of unknown length), streamed on the fast path from the
fill the request started, as the origin sends it: the full handler's answer (serving.serve_fill, respond.send_stream)
with the same head, body, counters and log line, without handing the connection to aiohttp.

The head is encoded before anything is decided (planned); a field that cannot be sent as it is leaves the request to
the full handler. An origin that fails before the body's first byte gets the 502 of coldmiss.failed; one that fails
later cuts the connection, so the client sees a short answer, never wrong or padded bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import variant
from edgecache.errors import OriginError
from edgecache.proxy import encode, linger, observe
from edgecache.proxy.fill import FillHead
from edgecache.proxy.serving import FromFill, fill_fields, from_fill, peer_marks

if TYPE_CHECKING:
    from edgecache.proxy.coldmiss import Started
    from edgecache.proxy.fastpath import FastPath

log = logging.getLogger(__name__)
_ANSWERED = metrics.FAST_PATH.labels("answered")


@dataclass(frozen=True, slots=True)
class Planned:
    """The encoded head of a streamed answer, its status, and how its body is sent."""

    head: bytes
    status: int
    chunked: bool
    stored: bool  # the fill's answer is stored (one of unknown length): not an uncacheable miss
    keep_alive: KeepAlive  # the connection's state after it (encode.frame)


def planned(conn: FastPath, started: Started, head: FillHead) -> Planned | None:
    """The answer the full handler streams from the fill this request started or joined (its head in), if that is
    what it does: a whole body it does not store, for the request that started the fill, or one of unknown length
    any request may share (read from its first byte: Fill.stream), of the variant the request names. None: anything
    else (stored, ranged, another variant, a 304), or a head that cannot be encoded."""
    cold = started.cold
    if from_own_fill(conn, started, head) != "stream":  # never another request's private answer
        return None
    if head.meta.status < 200 or head.meta.status in (205, 304):
        return None  # framing of aiohttp's own (a 205's empty chunked body), which the full handler writes
    empty = head.meta.status == 204 or cold.method == "HEAD"  # no body may follow (RFC 9110 8.6, 9.3.2)
    meta, fields = fill_fields(head, started.ours, started.status, cold.req.spread_from, cold.req)
    fields = encode.bodiless(meta.status, fields)
    length = None if head.end is None or meta.status == 204 else str(head.end)
    if length is not None:
        fields.append(("Content-Length", length))
    chunked, keep_alive = encode.frame(fields, empty, length, cold.keep_alive)
    status = meta.status
    encoded = encode.head(status, encode.phrase(status), fields, conn.server.date(), keep_alive, "utf-8")
    return None if encoded is None else Planned(encoded, status, chunked, head.store, keep_alive)


def from_own_fill(conn: FastPath, started: Started, head: FillHead) -> FromFill | None:
    """How the full handler answers a miss from the fill its request started or joined, now that the head is in
    (serving.from_fill), when that is all it decides; None where it decides otherwise: a 304, another variant's
    answer (it looks again under that variant's key: EdgeHandler._cached_loop), or too many requests in flight (503,
    the fill let go). A revalidation's new answer is one (EXPIRED: Started.status); so is a peer cache's answer to
    the fill (a hot copy's owner's, or a look-aside's at the previous owner)."""
    if head.status == 304:
        return None
    if conn.server.shared.overloaded:
        return None
    if other_variant(started, head):
        return None
    return from_fill(head, started.fill, started.ours, started.cold.req.headers)


def other_variant(started: Started, head: FillHead) -> bool:
    """Is the fill's answer another variant than the request's (a Vary its fill could not know to send)?"""
    return bool(head.meta.vary) and head.variant != variant(head.meta.vary, started.cold.req.headers)


Failed = Callable[["FastPath", "Started", OriginError, bool], None]


def start(conn: FastPath, started: Started, plan: Planned, failed: Failed) -> None:
    """Stream the answer off the connection's turn; `failed` answers an origin that fails before the first byte."""
    conn.busy = True
    conn.loop.create_task(_send(conn, started, plan, failed)).add_done_callback(conn.done)


async def _send(conn: FastPath, started: Started, plan: Planned, failed: Failed) -> None:
    """Stream the fill's body to the client as it comes, at the client's pace (the fill holds a private body's
    producer back meanwhile); counted and logged when it ends, or when it ends short (status 0, as the full
    handler logs an answer cut off)."""
    shared, cold = conn.server.shared, started.cold
    t = started.trace(started.status, uncacheable=not plan.stored)
    peer_marks(t, started.fill.head.result(), cold.req)
    t.origin_ms = started.origin_ms
    shared.in_flight += 1
    nbytes, code = 0, 0
    try:
        if cold.method == "HEAD":  # no body to wait for: the head goes at once (respond.send_stream)
            started.fill.abandon()
            if started.expected is not None:
                started.expected.release()
            _head(conn, plan, t)
        else:
            async with contextlib.aclosing(started.fill.stream(started.expected)) as body:
                try:
                    first = await anext(body, None)
                except OriginError as exc:  # nothing sent yet: answered as the full handler answers it
                    code = -1
                    failed(conn, started, exc, True)
                    return
                _head(conn, plan, t)
                try:
                    if first is not None:
                        nbytes += await piece(conn, first, plan.chunked)
                    async for data in body:
                        nbytes += await piece(conn, data, plan.chunked)
                except OriginError as exc:
                    log.warning(
                        "aborting response to %s after %d bytes: %s", cold.req.key.full_target[:200], nbytes, exc
                    )
                    if conn.transport is not None:
                        conn.transport.abort()
                    raise ConnectionAbortedError(str(exc)) from exc
            if plan.chunked:
                write(conn, b"0\r\n\r\n")
        code = plan.status
    finally:
        shared.in_flight -= 1
        if code >= 0:  # -1: answered and logged by `failed`
            logged(conn, started, t, code, nbytes)
    if not plan.keep_alive.persists:
        linger.close(conn)


async def piece(conn: FastPath, data: bytes | memoryview, chunked: bool) -> int:
    """Write one piece of a body (as a chunk when `chunked`), waiting while the client is not taking them."""
    n = len(data)
    if not n:
        return 0
    if chunked:
        write(conn, b"%x\r\n" % n)
        write(conn, data)
        write(conn, b"\r\n")
    else:
        write(conn, data)
    if conn.write_paused:
        await conn.drain()  # raises once the client is gone, or cut for not reading (write_timeout)
    return n


def _head(conn: FastPath, plan: Planned, t: observe.Trace) -> None:
    write(conn, plan.head)
    observe.head_sent(t)
    _ANSWERED.inc()


def write(conn: FastPath, data: bytes | memoryview) -> None:
    transport = conn.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    transport.write(data)


def logged(conn: FastPath, started: Started, t: observe.Trace, code: int, nbytes: int) -> None:
    """Count and log an answer to a cold miss written from its fill (here, and proxy.pastend's)."""
    cold, shared = started.cold, conn.server.shared
    observe.count(t, cold.method, code)
    way = observe.traced_way(t)
    observe.served(t, way, nbytes)
    if shared.access.enabled:
        req = cold.req
        client = cold.viewer or conn.client
        line = observe.Line.of(client, cold.method, req.host, req.key.full_target, req.headers, cold.keep_alive)
        observe.log_line(shared.access, t, line, code, nbytes, shared.node, way, conn.retried.unreached)
