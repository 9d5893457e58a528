"""A GET or HEAD the cache does not answer (lookup.Pass), passed to the origin on the fast path: the full handler's
pass_through with the same bytes, counters and log line, without handing the connection to aiohttp.

What is sent is core.forward.pass_request's (the key's host and target, the client's end-to-end fields); what is
passed back is the origin's answer as encode.relayed frames it, its body as it arrives. An origin that fails before
its answer gets the full handler's 502/504 (refuse.origin_failed); one that fails mid-body cuts the connection, so
the client sees a short answer, never wrong or padded bytes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core.forward import pass_request
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.errors import OriginError
from edgecache.proxy import encode, linger, observe, refuse
from edgecache.proxy.lookup import Pass
from edgecache.proxy.origin import OriginResponse, read_chunks
from edgecache.proxy.passthrough import relay_field, relayed_changing
from edgecache.proxy.uncached import piece, write

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

log = logging.getLogger(__name__)
_FROM_ORIGIN = metrics.BYTES_SERVED.labels("origin")
_ANSWERED = metrics.FAST_PATH.labels("answered")
_NO_BODY = frozenset({204, 304})


def start(conn: FastPath, p: Pass) -> None:
    """Pass the request on off the connection's turn."""
    conn.busy = True
    t0 = time.monotonic() if p.began is None else p.began
    conn.loop.create_task(carry_out(conn, p, t0)).add_done_callback(conn.done)


async def carry_out(conn: FastPath, p: Pass, t0: float) -> None:
    """Pass the request on, on a task of the connection's (`t0`: when it began)."""
    shared, req = conn.server.shared, p.req
    t = observe.new_trace()
    t.t0, t.site, t.status = t0, req.site.name, p.status
    t.evicted, t.failover, t.for_peer = p.evicted, p.failover, p.viewer is not None
    t.uncacheable, t.expired = p.uncacheable, p.expired or p.status is CacheStatus.EXPIRED
    t.moved = p.moved  # its bytes the origin's (never from_peer): it asks the origin
    field = cache_status_header(p.status, detail=p.detail) if p.churned is None else relay_field(t, req, p.churned)
    t.body_bytes = 0  # what reaches the client, however the answer ends (_relay counts it)
    origin = shared.engine.origin
    client = conn.address if p.viewer is None else ""  # a peer's forward names its viewer already
    sent = pass_request(p.method, req.key, req.headers, req.site.origin_host, client, via=origin.via)
    shared.in_flight += 1
    code, asked, keep_alive = 0, time.monotonic(), p.keep_alive
    try:
        try:
            if p.churned is not None:  # as the full handler relays it (passthrough.relay_changing), origin_ms told
                resp = await relayed_changing(origin, req, p.method, t)
            else:
                resp = await origin.request(req.site, sent.method, sent.target, sent.headers, passed=True)
                t.origin_ms = round((time.monotonic() - asked) * 1000, 3)
        except OriginError as exc:
            code = -1  # answered and logged as the origin's failure
            refuse.origin_failed(conn, exc, p.method, req, p.keep_alive, p.viewer, t0, p.origin_ms)
            return
        t.sources.asked(resp.addr)
        try:
            relayed = await _relay(conn, p, resp, t, field)
            code, keep_alive = (resp.status, relayed) if relayed is not None else (-1, p.keep_alive)
        finally:
            resp.release()
    finally:
        shared.in_flight -= 1
        if code >= 0:
            _logged(conn, p, t, code, t.body_bytes or 0)
    if not keep_alive.persists:
        linger.close(conn)


async def _relay(conn: FastPath, p: Pass, resp: OriginResponse, t: observe.Trace, field: str) -> KeepAlive | None:
    """Write the origin's answer: its head (`field` its Cache-Status), then its body as it comes, counting what is
    written (t.body_bytes). The connection's state after it; None: a head that cannot be passed on, answered as the
    origin's failure."""
    status, date = resp.status, conn.server.date()
    reason = resp.raw.reason or ""
    encoded, chunked, keep_alive = encode.relayed(
        status, reason, resp.headers, field, p.method, date, p.keep_alive, "utf-8"
    )
    if encoded is None:
        failure = OriginError("its answer has a field that cannot be passed on")
        failure.tried = resp.addr
        refuse.origin_failed(conn, failure, p.method, p.req, p.keep_alive, p.viewer, t.t0, t.origin_ms)
        return None
    write(conn, encoded)
    observe.head_sent(t)
    _ANSWERED.inc()
    if p.method == "HEAD" or status in _NO_BODY or status < 200:
        return keep_alive
    t.body_bytes = 0
    try:
        async for chunk in read_chunks(resp):
            _FROM_ORIGIN.inc(len(chunk))
            t.body_bytes += await piece(conn, chunk, chunked)
    except OriginError as exc:
        target = p.req.key.full_target[:200]
        log.warning("aborting pass-through of %s after %d bytes: %s", target, t.body_bytes, exc)
        if conn.transport is not None:
            conn.transport.abort()
        raise ConnectionAbortedError(str(exc)) from exc
    if chunked:
        write(conn, b"0\r\n\r\n")
    return keep_alive


def _logged(conn: FastPath, p: Pass, t: observe.Trace, code: int, nbytes: int) -> None:
    shared, req = conn.server.shared, p.req
    observe.count(t, p.method, code)
    way = observe.traced_way(t)
    observe.served(t, way, nbytes)
    if shared.access.enabled:
        client = p.viewer or conn.client
        line = observe.Line.of(client, p.method, req.host, req.key.full_target, req.headers, p.keep_alive)
        observe.log_line(shared.access, t, line, code, nbytes, shared.node, way, conn.retried.unreached)
