"""The origins that number purges (node incarnations, `node id~random`): how many a node takes from a peer, how
long one that numbers no more is kept, and the retired ones a node lists (core.purgeprune decides which)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TEXT = 8192  # an origin's, a site's, a host's or a path's characters, at most (core.purge.Entry)

# Origins in a vector (or in a list of retired ones) a node takes from a peer, and so the most one may hold and
# still be heard: past it peers answer 400 and purge sync stops. Pruning (core.purgeprune) keeps a vector to the
# incarnations of the current members and those that numbered a purge within about two HORIZONs: far below it
# (the alert PurgeVectorLarge fires at a quarter). Sized so a request holding a vector and a list that full stays
# under the admin API's 1 MiB body limit with node ids of 40 characters.
MAX_ORIGINS = 8192
# How long an origin numbers no purge before it may be pruned (core.purgeprune), and how long it is listed as
# retired after. Long enough for a node taken out of the membership for maintenance or a node pool's upgrade to
# come back and be told it missed purges; short enough that only a few days' worth of incarnations is held.
HORIZON = 2 * 86400.0


@dataclass(frozen=True, slots=True)
class Retired:
    top: int  # the last purge the origin numbered, as far as this node knows
    at: float  # when it was pruned here


def parse_vector(value: object, bound: int | None = MAX_ORIGINS) -> dict[str, int] | None:
    """A vector from a peer or the log, or None when malformed; never raises. The log's own (bound None) is read
    whatever its size: a node that grew one past the bound before pruning must not forget every purge."""
    if not isinstance(value, dict) or (bound is not None and len(value) > bound):
        return None
    if not all(isinstance(k, str) and len(k) <= MAX_TEXT and type(v) is int and v >= 0 for k, v in value.items()):
        return None
    return dict(value)


def parse_retired(value: object, bound: int | None = MAX_ORIGINS) -> frozenset[str] | None:
    """A peer's list of the origins it pruned (absent: none, as a version before pruning sends), or None when
    malformed; never raises."""
    if value is None:
        return frozenset()
    if not isinstance(value, list) or (bound is not None and len(value) > bound):
        return None
    if not all(isinstance(o, str) and len(o) <= MAX_TEXT for o in value):
        return None
    return frozenset(value)


def parse_tombstones(value: object, bound: int | None = MAX_ORIGINS) -> dict[str, Retired] | None:
    """Retired origins, {origin: [top, at]}, from a peer's answer or the log; None when malformed (never
    raises)."""
    if not isinstance(value, dict) or (bound is not None and len(value) > bound):
        return None
    found: dict[str, Retired] = {}
    for origin, row in value.items():
        if not isinstance(origin, str) or len(origin) > MAX_TEXT or not isinstance(row, list) or len(row) != 2:
            return None
        top, at = row
        if type(top) is not int or top < 0 or type(at) not in (int, float):
            return None
        found[origin] = Retired(top, float(at))
    return found
