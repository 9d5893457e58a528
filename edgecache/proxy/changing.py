"""A request on the fast path whose fills keep meeting new versions of the object, or keep being overtaken by purges
here: decided again, then relayed, as the full handler does it (core.churn).

Each new version met before any byte went out, and each fill a purge overtook (errors.Overtaken), is a try of the
head's (coldmiss.tried, counted as the full handler counts its tries: churn.Tries). While churn.next_try says FILL the
request starts again, decided afresh: a miss of the version the origin has now, or a look-up after the purge, which
drops nothing (the purge did). Out of fills (RELAY, OVERTAKEN, SPENT) it is what the full handler does then: ONE
origin request for what the client asked, its answer streamed as it comes and never stored (passthrough.relay_changing).
Here the relay is a pass-through of its own (lookup.Pass.churned), carried out by proxy.passing with the same
request, bytes, Cache-Status, counters and log line (passthrough.relay_field); never handed to aiohttp's server.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from edgecache.core.churn import Next
from edgecache.core.status import CacheStatus
from edgecache.errors import VersionChanged
from edgecache.proxy import coldmiss, passing
from edgecache.proxy.lookup import Pass
from edgecache.proxy.prepared import Prepared

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath


async def again(conn: FastPath, p: Prepared, raw: bytes, exc: VersionChanged) -> None:
    """The answer `p` to the head `raw` met a new version, a purge here overtook its fill, or the peer's answer its fill
    read broke off (`exc`: errors.PeerCut), before any byte went out: a try (coldmiss.tried). Decided again
    (coldmiss.changed), or, out of fills, what it was made of goes (coldmiss.dropped) and the request is relayed, said
    and counted as core.churn's step has it."""
    step = coldmiss.tried(conn, raw, exc)
    if step is Next.FILL:
        await coldmiss.changed(conn, p, raw, exc)
        return
    await coldmiss.dropped(conn, p, exc)
    hit = p.hit
    began = p.began if p.began is not None else time.monotonic()
    req = replace(hit.req, headers=p.asked)  # with the Range of one cut from its whole answer (Prepared.range_field)
    relay = Pass(req, CacheStatus.MISS, p.method, p.keep_alive, hit.viewer, began=began, churned=step)
    await passing.carry_out(conn, relay, began)
