"""A hit's answer, ready to send (Prepared): what the fast path's decisions (decide.Decider) hand a connection to
write, and the copies made of one for a renewed answer, or a remembered one for another hop's viewer. Apart from
the Decider, so that what sends or counts an answer (cork, diskhit, multipart, coldmiss, refuse) need not import
the decisions' memos and parser to name it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields

from edgecache.core.entry import ObjectMeta
from edgecache.core.headers import Headers
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe, rangecut
from edgecache.proxy.expecting import Expected
from edgecache.proxy.fill import Fill
from edgecache.proxy.hit import Hit, copied


@dataclass(slots=True)
class Prepared:
    """A hit's answer, ready to send: the decision, its encoded head, and what counts it."""

    hit: Hit
    method: str
    keep_alive: KeepAlive
    head: bytes
    tally: observe.Tally
    slices: tuple[tuple[str, int, int], ...]  # (slice name, first byte, end) of the body, in order
    range_field: str | None = None  # the Range of a request answered from its whole-object answer, for the log
    # PARTIAL when a slice it needs is fetched for it (diskhit.partial), with its miss's cause
    status: CacheStatus = CacheStatus.HIT
    cause: str | None = None
    began: float | None = None  # a miss's (coldmiss): when its request was decided to be one (monotonic)
    origin_ms: float | None = None  # and how long its origin took to answer
    fill: Fill | None = None  # and the fill it reads (reading.read_slice)
    ours: bool = False  # and that fill was started for it (else it joined another request's)
    expected: Expected | None = None  # and the request, as that fill's reader until it reads (proxy.expecting)
    validating: ObjectMeta | None = None  # and the stale entry that fill replaces (EXPIRED)
    way: str | None = None  # where its bytes came from (observe.upstream) when not a plain hit's "cache"
    cutter: rangecut.Cutter | None = None  # a whole-object basis's: what its cuts share (made at its first cut)

    @property
    def asked(self) -> Headers:
        """The request's fields as it sent them: one cut from its whole-object answer (decide.Decider._ranged) had
        its Range."""
        fields = self.hit.req.headers
        return fields if self.range_field is None else (*fields, ("Range", self.range_field))


# Every field, in order: a copy made by calling the class with them, as dataclasses.replace makes one, at a fifth of
# its cost on the path of every request a peer forwards and every remembered answer whose Age ticked.
_PREPARED_FIELDS = operator.attrgetter(*(f.name for f in fields(Prepared)))


def with_hit(prepared: Prepared, hit: Hit) -> Prepared:
    answer = Prepared(*_PREPARED_FIELDS(prepared))
    answer.hit = hit
    return answer


def for_hop(prepared: Prepared, viewer: str, fills: bool) -> Prepared:
    """A remembered hop's answer for this hop's viewer: whom the access log names, and whether it may fill."""
    hit = copied(prepared.hit)
    hit.viewer, hit.fills = viewer, fills
    return with_hit(prepared, hit)
