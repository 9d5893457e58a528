"""A miss on the fast path, of an object nothing is known of or whose stored entry must be revalidated: its fill
is started here (hit.find_cold decides which), and once the origin's head is in, the request is decided again and
is answered through the same slice reader as any hit (diskhit): as a miss that reads the fill (expired when it
replaced a stale entry), or as revalidated from the stored entry a 304 confirmed (decide.Decider.fetched).

Whatever the head turns out to be that the fast path does not answer (an answer that is not stored, a failure, a
Vary, a plan of its own), the request goes to the full handler with the fill it started (EdgeHandler.adopted):
the handler carries on with that fill as if it had started it, so the origin is asked once either way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecache import metrics
from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import digest
from edgecache.core.status import miss_cause
from edgecache.proxy.decide import Prepared
from edgecache.proxy.fill import Adopted, Fill
from edgecache.proxy.hit import Forward, Load

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath


@dataclass(slots=True)
class Started:
    """The fill a connection's cold miss started or joined, for the head at the front of its buffer."""

    head: bytes
    primary: str
    fill: Fill
    ours: bool  # started for this request: the full handler takes it over should the fast path not answer
    cause: str  # the miss's cause (cold, or evicted when this process had stored the object and dropped it)
    began: float  # monotonic
    validating: ObjectMeta | None  # the stale entry the fill revalidates (None: nothing was stored)
    origin_ms: float | None = None  # how long the head took to come


def start(conn: FastPath, head: bytes) -> bool:
    """Start (or join) the fill of a miss and wait for its head off the connection's turn; False: not one the
    fast path fills (the caller hands the request to aiohttp, which decides it)."""
    handler = conn.server.handler
    cold = conn.server.decider.cold(head, conn.client)
    if cold is None:
        return False
    engine = handler.engine
    fill, ours = engine.fill_for(cold.req, cold.first, cold.last, cold.validate)
    expired = cold.validate is not None
    evicted = not expired and engine.ghosts.object_dropped(digest(cold.req.entry_key))
    cause = miss_cause(uncacheable=False, expired=expired, evicted=evicted, failover=False).value
    conn.started = started = Started(head, cold.req.primary, fill, ours, cause, time.monotonic(), cold.validate)
    conn.busy = True
    conn.loop.create_task(_head_in(conn, started)).add_done_callback(conn.done)
    return True


async def _head_in(conn: FastPath, started: Started) -> None:
    handler = conn.server.handler
    handler.in_flight += 1
    try:
        await asyncio.wait([started.fill.head])  # a failure is the full handler's to answer (settle)
    finally:
        handler.in_flight -= 1
    started.origin_ms = round((time.monotonic() - started.began) * 1000, 3)


def settle(conn: FastPath, head: bytes, decided: Prepared | Load | Forward | None) -> Prepared | None:
    """The answer to the head whose fill has its head now: a miss from what was stored, or None, and the request
    goes to the full handler with the fill it started (hand_off)."""
    started, conn.started = conn.started, None
    assert started is not None
    conn.loads = 0
    fill = started.fill
    arrived = fill.head.done() and not fill.head.cancelled() and fill.head.exception() is None
    if arrived and started.head == head and decided is None and fill.head.result().status == 304:
        decided = conn.server.decider.validated(head, conn.client)  # confirmed, yet stale: answered all the same
    if arrived and started.head == head and isinstance(decided, Prepared):
        ms, validating = started.origin_ms or 0.0, started.validating
        got = conn.server.decider.fetched(decided, fill, started.ours, started.cause, started.began, ms, validating)
        if got is not None:
            if not started.ours:
                metrics.COLLAPSED.inc()  # as the full handler counts a request that joined another's fill
            return got
    if started.ours:
        waited = started.origin_ms if arrived else None
        conn.adopted = Adopted(fill, started.primary, started.began, waited, started.validating)
    return None


def adopt(conn: FastPath, p: Prepared) -> None:
    """A miss's answer that could not start (its body failed before its first byte) goes to the full handler with
    its fill, which answers as it would have (the failure), without asking the origin again."""
    if p.fill is not None:
        conn.adopted = Adopted(p.fill, p.hit.req.primary, p.began or time.monotonic(), p.origin_ms, p.validating)


def drop(conn: FastPath) -> None:
    """The client left: a fill only it would have read is let go (a private one would hold its origin
    connection at its bound)."""
    started, conn.started = conn.started, None
    if started is not None and started.ours:
        started.fill.abandon()
    adopted, conn.adopted = conn.adopted, None
    if adopted is not None:
        adopted.fill.abandon()
