"""A miss whose fill brings a run of slices of a copy with no version, and whose answer needs slices past that run:
answered from a fill of the whole object instead (core.fillcost.run_serves), on either path.

Nothing is known of an object before its first answer, so a cold miss of a range (`bytes=0-`, a player's first), or
of a HEAD, asks the origin for a run of slices, and a plain GET that comes meanwhile joins that fill. When the head
says the copy has no validator, no other fetch can be proven to bring the same bytes: each is a copy of its own
(fillhead._copy). Answered from the run, such a request sent its head and the run's slices, then met another copy in
the fill of the next slice (errors.VersionChanged) and was cut. It waits instead for the head of a fill of the whole
object (one under way, joined, or one started for it: Engine.fill_for(..., whole=True)) and is answered from that
one fetch: two origin requests in all, the run's (already asked, and answering the requests within it) and the whole
object's.
"""

from __future__ import annotations

import functools

from edgecache.core import entry
from edgecache.core.fillcost import run_serves
from edgecache.core.headers import Headers
from edgecache.proxy.fill import Fill, FillHead
from edgecache.proxy.respond import answer_span


def needs_whole(fill: Fill, head: FillHead, method: str, headers: Headers, slice_size: int) -> bool:
    """Is the request (`method`, `headers`) whose fill has its `head` to be answered from a fill of the whole object
    instead? Only an answer read as stored (a shared copy of known length) is: any other is streamed from a fill that
    brings it whole, or passed through (serving.from_fill)."""
    if head.status == 304 or not (head.store and head.shared) or head.meta.length < 0:
        return False
    span = functools.partial(answer_span, method, headers, head.meta, slice_size)
    return not run_serves(entry.versioned(head.meta), (fill.first_index, fill.last_index), span)
