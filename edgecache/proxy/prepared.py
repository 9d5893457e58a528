"""A hit's answer, ready to send (Prepared): what the fast path's decisions (decide.Decider) hand a connection to
write, its head as written at each send (head_at), and the copy of a remembered one for another hop's viewer.
Apart from the Decider, so that what sends or counts an answer (cork, diskhit, multipart, coldmiss, refuse) need
not import the decisions' memos and parser to name it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields

from edgecache.core.entry import ObjectMeta
from edgecache.core.headers import Headers
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe, rangecut
from edgecache.proxy.expecting import Expected
from edgecache.proxy.fill import Fill
from edgecache.proxy.hit import Hit, age_of, copied


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
    addr: str | None = None  # and whom its fill asked (Fill.addr): the log's upstream_addr
    fill: Fill | None = None  # and the fill it reads (reading.read_slice)
    ours: bool = False  # and that fill was started for it (else it joined another request's)
    expected: Expected | None = None  # and the request, as that fill's reader until it reads (proxy.expecting)
    validating: ObjectMeta | None = None  # and the stale entry that fill replaces (EXPIRED)
    way: str | None = None  # where its bytes came from (observe.upstream) when not a plain hit's "cache"
    cutter: rangecut.Cutter | None = None  # a whole-object basis's: what its cuts share (made at its first cut)
    # Where head holds its Age value (head[at:end]), brought up to the clock's as it is sent (head_at): an answer
    # found fresh (Hit.fresh_until) stays the answer to its head until then, though its Age ticks every second.
    # None: head as it is (its Age is its decision's, or it was encoded again from fields whose Age is the clock's).
    age_span: tuple[int, int] | None = None
    # From when until when head's Age is the clock's (head_at): from its first send, until its Age ticks.
    age_from: float = math.inf
    age_until: float = -math.inf

    @property
    def asked(self) -> Headers:
        """The request's fields as it sent them: one cut from its whole-object answer (decide.Decider._ranged) had
        its Range."""
        fields = self.hit.req.headers
        return fields if self.range_field is None else (*fields, ("Range", self.range_field))


def head_at(p: Prepared, now: float) -> bytes:
    """The head as it is written at `now`: with an age_span, its Age the clock's, exactly as the decision at `now`
    would encode it (hit.age_of), the head made again (in place) only once that Age may have ticked since it was
    last written, or the clock went back. So a remembered answer is never renewed or copied for its Age, and the
    bytes at `now` are the same whatever was asked before."""
    if p.age_from <= now < p.age_until:
        return p.head
    span = p.age_span
    if span is None:
        return p.head
    age = int(age_of(p.hit, now))
    head, (at, end) = p.head, span
    text = b"%d" % age
    p.head, p.age_span = head[:at] + text + head[end:], (at, at + len(text))
    aged(p, now, age)
    return p.head


# Seconds before the moment an Age ticks that a head stops being taken as it is: far beyond the rounding of the
# age's sums (under a microsecond at today's clock), so until then its Age is the clock's; after it, the age
# itself is computed again (head_at).
_TICK_MARGIN = 1e-3


def aged(p: Prepared, now: float, age: int) -> None:
    """p's head has the Age `age`, its entry's at `now` (int(hit.age_of())): it is taken as it is from `now` until
    that Age ticks, the age growing only with the clock (hit.age_of)."""
    hit = p.hit
    p.age_from, p.age_until = now, hit.meta.response_time + (age + 1 - hit.initial_age) - _TICK_MARGIN


# Every field, in order: a copy made by calling the class with them, as dataclasses.replace makes one, at a fifth of
# its cost on the path of every request a peer forwards.
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
