"""The fast path's own error answers: a request refused before any lookup (core.admit: no site, a bad target, the
site's ACL, a signed URL, the rate limit, only-if-cached), and the origin's failure of a miss's own fill
(coldmiss.failed). Each is written, counted and logged as the full handler writes, counts and logs the same
ClientError or OriginError (EdgeHandler._answer), byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core.headers import Headers, get_first
from edgecache.core.status import CacheStatus
from edgecache.proxy import encode, observe
from edgecache.proxy.hit import Refused

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

_ANSWERED = metrics.FAST_PATH.labels("answered")


def refused(conn: FastPath, r: Refused, t0: float) -> bool:
    """Answer a refusal; False when the connection closes after it."""
    reply = r.reply
    return write(conn, t0, r.method, r.site, r.target, r.headers, reply.status, reply.reason, r.keep_alive)


def write(
    conn: FastPath,
    t0: float,
    method: str,
    site: str,
    target: str,
    headers: Headers,
    status: int,
    reason: str,
    keep_alive: bool,
) -> bool:
    """Write the error answer `status` with `reason` to the request (`target` as the log names it); False when
    the connection closes after it."""
    answer = encode.error(status, reason, conn.server.date(), keep_alive)
    end = answer.index(b"\r\n\r\n") + 4
    if method == "HEAD":  # the head alone, Content-Length and all, as aiohttp answers a HEAD
        answer = answer[:end]
    t = observe.new_trace()
    t.t0, t.site, t.status = t0, site, CacheStatus.ERROR
    transport = conn.transport
    if transport is not None:
        transport.write(answer)
        observe.head_sent(t)
        _ANSWERED.inc()
    nbytes = len(answer) - end
    observe.count(t, method, status)
    way = observe.upstream(t.status, t.sources)
    observe.site_bytes(site, way).inc(nbytes)
    shared = conn.server.shared
    if shared.access.enabled:
        line = observe.Line.of(conn.client, method, get_first(headers, "host") or "", target, headers)
        observe.log_line(shared.access, t, line, status, nbytes, shared.node, way)
    if not keep_alive and transport is not None:
        conn.closing = True
        transport.close()
    return keep_alive
