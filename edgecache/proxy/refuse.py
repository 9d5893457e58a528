"""The fast path's own error answers: a request refused before any lookup (core.admit: no site, a bad target, the
site's ACL, a signed URL, the rate limit, only-if-cached), and the origin's failure of a miss's own fill or of a
pass-through (origin_failed). Each is written, counted and logged as the full handler writes, counts and logs the same
ClientError or OriginError (EdgeHandler._answer), byte for byte.

And the answer to a request whose handling raised an exception nobody expected (a bug, or a storage call failing in
a way it never should): a 500 that says so (core.admit.internal, failed) when no byte of its answer went out, else
the connection cut (FastPath.ended); never a connection dropped with no answer, nor a wait for a timeout. No byte can
have gone out during the decision of the head at the front (Cork.around, between head_end and decided), a lookup
made off the loop for it (before_head), and a hit's task until it writes its head (until_head). Counted as every
refusal is (edgecache_requests_total, 5xx, cache_status error), the traceback in the node's log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core import admit
from edgecache.core.admit import Reply
from edgecache.core.headers import Headers, get_first
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import without_params
from edgecache.core.status import CacheStatus
from edgecache.errors import OriginError
from edgecache.proxy import encode, errorpage, linger, observe
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.route import Refused

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath
    from edgecache.proxy.prepared import Prepared

_ANSWERED = metrics.FAST_PATH.labels("answered")
log = logging.getLogger(__name__)


def refused(conn: FastPath, r: Refused, t0: float, origin_ms: float | None = None, tried: str | None = None) -> bool:
    """Write the refusal's answer, counted and logged unless not `r.counted` (with `origin_ms`, the time the origin
    took to answer a head, when one came, and `tried`, whom it asked: OriginError.tried); False when the connection
    closes after it."""
    status = r.reply.status
    answer = encode.error(status, r.reply.reason, conn.server.date(), r.keep_alive, r.reply.retry_after)
    end = answer.index(b"\r\n\r\n") + 4
    if r.method == "HEAD":  # the head alone, Content-Length and all, as aiohttp answers a HEAD
        answer = answer[:end]
    t = observe.new_trace()
    t.t0, t.site, t.status, t.origin_ms = t0, r.site, CacheStatus.ERROR, origin_ms
    t.for_peer = r.viewer is not None
    t.sources.asked(tried)
    transport = conn.transport
    if transport is not None:
        transport.write(answer)
        _ANSWERED.inc()
        if r.counted:
            observe.head_sent(t)
    if r.counted:
        nbytes = len(answer) - end
        observe.count(t, r.method, status)
        way = observe.upstream(t.status, t.sources)
        observe.served(t, way, nbytes)
        shared = conn.server.shared
        if shared.access.enabled:
            client = r.viewer or conn.client
            host = r.host if r.host is not None else get_first(r.headers, "host") or ""
            target = r.target if r.host is not None else without_params(r.target, shared.access.never)  # no key
            line = observe.Line.of(client, r.method, host, target, r.headers, r.keep_alive)
            line.protocol = r.protocol or line.protocol
            observe.log_line(shared.access, t, line, status, nbytes, shared.node, way, conn.retried.unreached)
    if not r.keep_alive.persists:
        linger.close(conn)  # what the client sent after the refused request, unread, would reset the answer
    return r.keep_alive.persists


def origin_failed(
    conn: FastPath,
    exc: OriginError,
    method: str,
    req: FillRequest,
    keep_alive: KeepAlive,
    viewer: str | None,
    t0: float,
    origin_ms: float | None = None,
    asked: Headers | None = None,
) -> bool:
    """The answer when the origin fails a request with nothing to stand in (errorpage.origin_failed),
    counted and logged as the full handler counts and logs it (EdgeHandler._answer); as refused() returns.
    `asked`: the request's fields as sent, when `req` holds fewer (a range cut from the whole answer)."""
    log.info("%s %s: origin failed: %s", method, req.key.full_target[:200], exc)
    status, reason, uncounted = errorpage.origin_failed(exc)
    if uncounted:
        metrics.ORIGIN_ERRORS.labels(req.site.name, "failed").inc()
    reply = Reply(status, reason)
    fields = req.headers if asked is None else asked
    r = Refused.keyed(reply, method, req.key, fields, req.site.name, keep_alive, viewer=viewer)
    return refused(conn, r, t0, origin_ms, exc.tried)


def failed(conn: FastPath, exc: Exception, p: Prepared | None = None) -> None:
    """Answer 500 for the request `p`, or the head at the front of the connection's input (whose decision failed),
    and close: what follows it in the input was never decided."""
    log.error("fast path: internal error answering a request: %r", exc, exc_info=exc)
    reply = admit.internal(type(exc).__name__)
    if p is not None:
        hit, closed = p.hit, p.keep_alive.closed()
        r = Refused.keyed(reply, p.method, hit.req.key, hit.req.headers, hit.site.name, closed, viewer=hit.viewer)
    else:
        line = conn.buf.lstrip(b"\r\n").split(b"\r\n", 1)[0].split(b" ")
        method, target = [*line, b"", b""][:2]
        closed = KeepAlive.CLOSE_10 if line[-1] == b"HTTP/1.0" else KeepAlive.CLOSE
        r = Refused(reply, method.decode("latin-1"), target.decode("latin-1"), (), keep_alive=closed)
    conn.busy = False  # nothing more is answered: the close below is the last of it
    refused(conn, r, time.monotonic())


async def before_head(conn: FastPath, work: Awaitable[object]) -> None:
    """A task that writes nothing (a lookup off the loop for the head at the front): if it fails, that head's 500."""
    try:
        await work
    except ConnectionError:
        raise
    except Exception as exc:
        failed(conn, exc)


async def until_head(conn: FastPath, p: Prepared, work: Awaitable[None]) -> None:
    """A hit's task that writes its head and, with no await between, tells the connection (FastPath.sent): if it
    fails before that, the request's 500; after, the failure goes on to cut the connection (FastPath.ended)."""
    mark = conn.first_byte
    try:
        await work
    except ConnectionError:
        raise
    except Exception as exc:
        if conn.first_byte != mark or conn.transport is None:
            raise
        failed(conn, exc, p)
