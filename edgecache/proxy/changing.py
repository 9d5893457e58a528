"""A request on the fast path whose fills keep meeting new versions of the object: relayed, as the full handler
relays it (core.churn).

The first new version met before any byte went out makes the request start again, decided afresh as a miss of the
version the origin has now (coldmiss.changed). The second is where the full handler stops filling
(churn.next_try: RELAY): ONE origin request for what the client asked, its answer streamed as it comes and never
stored (passthrough.relay_changing). Here the same: the relay is a pass-through of its own (lookup.Pass.changing),
carried out by proxy.passing with the same request, bytes, counters and log line.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from edgecache.core.status import CacheStatus
from edgecache.errors import Overtaken, VersionChanged
from edgecache.proxy import coldmiss, passing
from edgecache.proxy.lookup import Pass
from edgecache.proxy.prepared import Prepared

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath


async def relayed(conn: FastPath, p: Prepared, raw: bytes, exc: VersionChanged) -> bool:
    """The answer `p` to the head `raw` met a new version (`exc`) before any byte went out, and that head was decided
    again for one already: what it was made of goes (coldmiss.dropped) and the request is relayed. False: not its
    second change (coldmiss.changed decides the first again), a draining connection's, or a fill a purge here
    overtook (Overtaken: no new version), left to the full handler, whose tries tell a purge from a change."""
    if conn.changed != raw or conn.closing or isinstance(exc, Overtaken):
        return False
    await coldmiss.dropped(conn, p)
    hit = p.hit
    began = p.began if p.began is not None else time.monotonic()
    req = replace(hit.req, headers=p.asked)  # with the Range of one cut from its whole answer (Prepared.range_field)
    relay = Pass(req, CacheStatus.MISS, p.method, p.keep_alive, hit.viewer, began=began, changing=True)
    await passing.carry_out(conn, relay, began)
    return True
