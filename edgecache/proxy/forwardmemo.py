"""Remembered forwards: the same request head for an object another node owns goes to the same owner while the
routes, the ring and every peer's health are as they were; only what depends on the viewer or the moment (the
site's ACL, a signed URL, the rate limit, the object's heat) is asked again. And the hop field a peer's request
carries, cut from its head so that head can be remembered too (decide.Decider._hopped)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgecache.core import admit
from edgecache.core.admit import Reply
from edgecache.core.forward import pass_request
from edgecache.core.headers import Headers
from edgecache.core.memo import GENERATION_BYTES, Memo, Pool, generation, head_cost
from edgecache.core.popularity import spreadable
from edgecache.proxy.relayhead import RelayedHeads
from edgecache.proxy.route import BEHIND, HOT, Forward, Refused, forward_verdict

if TYPE_CHECKING:
    from edgecache.proxy.shared import Shared

_HOP_NAME = b"\r\nedgecache-hop:"  # lower case: looked for in the head lowered
_HOP_VALUE = re.compile(rb"[ \t]*([!-~]+)[ \t]*")


def split_hop(head: bytes) -> tuple[str, bytes] | None:
    """(the hop field's value, the head without it) when the head has exactly one plain hop line; else None, and
    the head is decided whole (find_hit reads its hop fields, whatever they are)."""
    lowered = head.lower()
    start = lowered.find(_HOP_NAME)
    if start < 0 or lowered.find(_HOP_NAME, start + 1) >= 0:
        return None
    end = head.find(b"\r\n", start + 2)  # a head ends with an empty line: there is always one
    value = _HOP_VALUE.fullmatch(head, start + len(_HOP_NAME), end)
    if value is None:
        return None
    return value[1].decode("ascii"), head[:start] + head[end:]


@dataclass(frozen=True, slots=True)
class _Entry:
    forward: Forward
    router: object
    ring: object
    changes: int  # ClusterView.changes when it was decided
    heat: bool  # the request counts towards its object's heat (core.popularity.spreadable)


# What is sent to the owner up to its hop field, by what it is made of: the same for every request of a remembered
# Forward from one address (pass_request is a function of these alone).
_Made = tuple[str, str, str, Headers, str]
# What one holds beyond the strings and fields its Forward holds already (measured with tracemalloc: 261 bytes for a
# head of 119), the head's bytes aside: its key, the bytes object, the table's slot, and what pass_request adds.
SENT_ENTRY = 224


def _sent_cost(made: _Made) -> int:
    return SENT_ENTRY + len(made[2]) + sum(len(k) + len(v) + 4 for k, v in made[3])


class ForwardMemo:
    def __init__(self, shared: Shared, pool: Pool | None = None) -> None:
        self.shared = shared
        # as the decisions' memos, in their pool (or one of its own, as large as theirs by default)
        entries, budget = generation(pool.budget if pool is not None else GENERATION_BYTES * 2)
        self.entries: Memo[bytes, _Entry] = Memo(entries, budget, head_cost, pool)
        self.sent: Memo[_Made, bytes] = Memo(entries, budget, _sent_cost, pool)
        self.heads = RelayedHeads(entries, budget, pool)  # the heads written for the owners' answers (proxy.relay)

    def sent_head(self, fwd: Forward, address: str) -> bytes:
        """The request line and fields sent to the owner for `fwd` from the viewer at `address`, without the hop
        field and the empty line that follow (proxy.relay)."""
        made = (fwd.method, fwd.key.host, fwd.key.full_target, fwd.headers, address)
        found = self.sent.get(made)
        if found is None:
            sent = pass_request(fwd.method, fwd.key, fwd.headers, None, address)
            lines = [f"{sent.method} {sent.target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in sent.headers)]
            found = self.sent[made] = "".join(lines).encode("utf-8", "surrogateescape")  # the viewer's bytes as sent
        return found

    def remember(self, head: bytes, forward: Forward) -> None:
        cluster = self.shared.cluster
        assert cluster is not None
        heat = spreadable(forward.headers)
        self.entries[head] = _Entry(forward, self.shared.router, cluster.ring, cluster.changes, heat)

    def get(self, head: bytes, client: str, admitted: bool = False) -> Forward | Refused | str | None:
        """The remembered forward of this head for this viewer; HOT: the object is hot here now, and this node's
        copy answers it (the popularity gate has counted the request); None: decide it in full."""
        entry = self.entries.get(head)
        if entry is None:
            return None
        shared, cluster = self.shared, self.shared.cluster
        assert cluster is not None
        if entry.router is not shared.router or entry.ring is not cluster.ring or entry.changes != cluster.changes:
            del self.entries[head]
            return None
        forward = entry.forward
        refused = admit.acl(forward.site, client)
        verdict = refused or forward_verdict(
            shared, forward.site, forward.key, client, entry.heat, forward.member, admitted
        )
        if verdict == HOT:
            return HOT
        if verdict == BEHIND:  # answered here, not relayed to the owner (route.forward_verdict): decided in full
            return None
        if isinstance(verdict, Reply):
            site = forward.site.name
            return Refused.keyed(verdict, forward.method, forward.key, forward.headers, site, forward.keep_alive)
        return forward if forward.client == client else replace(forward, client=client)
