"""A range past the end of an object not cached yet, answered on the fast path: the fill asked the origin for the
slice the client's range starts in, and the origin's 416 told the object's length (fillhead.RangeMismatch). The
client's own range, unsatisfiable for that length, gets the full handler's 416 (serving.past_the_end) with the same
bytes (respond.past_the_end), counted and logged as it counts and logs it: a MISS whose cause is what the miss
found, no origin time (the full handler's trace takes none from a fill whose head failed). Nothing is stored, and
the origin is not asked again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core.status import CacheStatus
from edgecache.proxy import encode, linger, observe, respond, uncached
from edgecache.proxy.fillhead import RangeMismatch

if TYPE_CHECKING:
    from edgecache.proxy.coldmiss import Started
    from edgecache.proxy.fastpath import FastPath

_ANSWERED = metrics.FAST_PATH.labels("answered")


def answered(conn: FastPath, started: Started) -> bool:
    """Write the 416 if the miss's fill ended in a 416 that leaves the client's range unsatisfiable (True); False:
    anything else, or a field of the origin's that cannot be written as it is (the full handler answers it)."""
    head, cold = started.fill.head, started.cold
    if not head.done() or head.cancelled() or not isinstance(exc := head.exception(), RangeMismatch):
        return False
    length = exc.unsatisfiable_for(cold.method, cold.req.headers)
    if length is None:
        return False
    planned = respond.past_the_end(cold.method, exc.fields, length)
    encoded = encode.head(416, encode.phrase(416), planned.fields, conn.server.date(), cold.keep_alive, "utf-8")
    if encoded is None:
        return False
    if started.ours:
        started.fill.abandon()  # nobody reads it: its head was its end
    t = started.trace(CacheStatus.MISS)
    transport = conn.transport
    if transport is not None:
        transport.write(encoded + planned.body)
        _ANSWERED.inc()
        observe.head_sent(t)
    uncached.logged(conn, started, t, 416, len(planned.body))
    if not cold.keep_alive.persists:
        linger.close(conn)  # what the client sent after it, unread, would reset the answer
    return True
