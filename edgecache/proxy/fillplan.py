"""The basis of a miss's answer planned from its fill's head alone.

A miss is decided again once its fill's head is in (coldmiss.settle), and answered from the hit it is then
(hit.as_fetched). That hit may be no hit of the fill at all: a purge met meanwhile (this worker's, or another's this
one caught up on) keys the object under a new generation, where nothing is stored, or what this process held of the
record was forgotten and is to be loaded again. The full handler answers such a miss from the fill all the same
(EdgeHandler._serve_head keys it by the fill's head: serving.serve_fill), with the bytes asked before the purge; so
the fast path answers it from a hit planned from that head alone, through the same as_fetched as any miss.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from edgecache.core.freshness import Use
from edgecache.core.keys import PrimaryRecord
from edgecache.proxy.fill import FillHead
from edgecache.proxy.hit import Hit, decided, planned_hit
from edgecache.proxy.lookup import Cold
from edgecache.proxy.shared import Shared


def basis(shared: Shared, cold: Cold, head: FillHead) -> Hit | None:
    """The hit the request `cold` decided is, were the copy its fill's `head` stores the one it finds: under the
    head's own key, of the head's version and length. Never remembered (valid for no time). None for a
    head that stores no copy (a 304, an answer not stored or not shared, or of unknown length): as_fetched answers
    only a stored copy's miss, and the caller leaves the others to what follows."""
    if head.status == 304 or not (head.store and head.shared) or head.meta.length < 0:
        return None
    req, meta = replace(cold.req, entry_key=head.entry_key), head.meta
    planned = planned_hit(cold.method, req.headers, meta, time.time(), "")  # its fields are as_fetched's to make
    if planned is None:
        return None
    return decided(
        shared, req, meta, planned,
        record=PrimaryRecord(req.generation, meta.vary),
        valid_until=-math.inf,  # never remembered
        viewer=cold.viewer,
        fills=True,
        use=Use.FRESH,
        changes=-1,
        failover=cold.failover,
        fresh_until=-math.inf,
    )  # fmt: skip
