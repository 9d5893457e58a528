"""Which origins a node's purge vector may drop (core.purge.SyncLog.pruned), decided from what its peers said.

Every incarnation of a node that takes a purge from an operator adds an origin to every node's vector (a new node
id, or a node whose purge log starts afresh: an address-named node, a pod on an ephemeral volume). Kept for ever,
the vectors grew past what peers take (core.purge.MAX_ORIGINS) and purge sync stopped cluster-wide, silently.

An origin goes when nothing can need it any more:
- it numbers no more purges: it is not this node's incarnation nor the one a member last said is its own (a
  member that has not said, a version before pruning, keeps every origin of its node id);
- this node and every current member have applied the same purges of it, all of them up to the last one, as
  each member's last answer says (a member not heard from since it came up, or down, stops all pruning: it may
  lack any of them), or that member pruned it already: once pruned, its purges are refused as applied;
- this node applied none of its purges for HORIZON: a node that is not a member now (a pod DNS no longer lists)
  and lacks one of them must come back while the others still know the origin. Within a further HORIZON/2 it is
  told to reset (purge every site hard: SyncLog.after, through the retired origins kept); later than that it is
  not told (docs/cluster.md, "The purge vector's bound").
The retired origins are forgotten two HORIZONs after they were pruned (see prunable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgecache.core.purge import HORIZON, SyncLog, Vector

__all__ = ["HORIZON", "Heard", "Pruning", "node_of", "prunable"]


@dataclass(frozen=True, slots=True)
class Heard:
    """A peer's last answer: its vector, its own origin ("" when it has numbered none; None when it does not
    say, a version before pruning) and the origins it pruned."""

    vector: Vector
    me: str | None = None
    retired: frozenset[str] = frozenset()

    def has_as_many(self, origin: str, n: int) -> bool:
        """Has it applied exactly the purges of `origin` a node with `n` of them has? (Having pruned it, it had:
        it pruned only once every member, this node too, showed all of them.)"""
        return self.vector.get(origin, 0) == n or origin in self.retired


@dataclass(frozen=True, slots=True)
class Pruning:
    origins: frozenset[str] = frozenset()  # to drop from the vector now
    forget: frozenset[str] = frozenset()  # retired ones to forget

    def __bool__(self) -> bool:
        return bool(self.origins or self.forget)


def node_of(origin: str) -> str:
    """The node id of an origin (`node id~random`)."""
    return origin.rpartition("~")[0]


def prunable(sync: SyncLog, peers: Mapping[str, Heard | None], now: float, horizon: float = HORIZON) -> Pruning:
    """What `sync` may drop (see the module's docstring). `peers`: every current member but this node that keeps
    a purge log, with its last answer (None: none since it came up)."""
    # Forgotten long after the others stopped telling a node that lacks it to reset (SyncLog.after, horizon/2):
    # nodes prune an origin at different times (each when it has heard every member), and one that forgot it while
    # another still told such nodes to reset would be told so, and purge every site.
    forget = frozenset(o for o, r in sync.retired.items() if now - r.at >= 2 * horizon)
    if any(h is None for h in peers.values()):
        return Pruning(forget=forget)
    heard = [h for h in peers.values() if h is not None]
    current = {sync.me, *(h.me for h in heard if h.me)}
    unsaid = {node for node, h in peers.items() if h is not None and h.me is None}
    origins = set()
    for origin, n in sync.vector.items():
        if origin in current or node_of(origin) in unsaid or sync.above.get(origin):
            continue  # (applied out of order here: this node lacks one of its purges, which a peer may bring)
        # As many as every member: one with more has purges this node lacks, and a pruned origin's are refused.
        if now - sync.seen.get(origin, now) >= horizon and all(h.has_as_many(origin, n) for h in heard):
            origins.add(origin)
    return Pruning(frozenset(origins), forget)
