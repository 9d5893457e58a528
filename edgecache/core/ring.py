"""Which nodes own an object: weighted rendezvous hashing (highest random weight).

Every node scores every key with a stable hash; the owners are the nodes in descending score. A new node takes
exactly the keys it now scores highest on (about weight/total of them) and nothing moves between the others;
a removed node's keys go to their next owner and nothing else moves. The ring is immutable: membership or
health changes build a new one, swapped in whole, so a request never sees half an update.

The hash is blake2b, identical on every worker and node; never Python's salted hash().
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    address: str  # host:port of its client listener, where forwarded requests go
    weight: float = 1.0
    admin: str | None = None  # host:port of its admin listener, where health checks go


def _score(key: str, member: Member) -> float:
    digest = hashlib.blake2b(f"{member.id}\x00{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    # A uniform value in (0, 1], then the logarithmic method for weights: -w / ln(u) (Schindelhauer & Schomaker).
    u = (int.from_bytes(digest, "big") + 1) / 2**64
    return -member.weight / math.log(u) if u < 1.0 else math.inf


@dataclass(frozen=True, slots=True)
class Ring:
    members: tuple[Member, ...]

    @classmethod
    def of(cls, members: Iterable[Member]) -> Ring:
        unique = {m.id: m for m in members}
        return cls(tuple(sorted(unique.values(), key=lambda m: m.id)))

    def owners(self, key: str) -> tuple[Member, ...]:
        """Every member, best owner first."""
        return tuple(sorted(self.members, key=lambda m: (-_score(key, m), m.id)))

    def owner(self, key: str) -> Member | None:
        best: Member | None = None
        best_score = -1.0
        for m in self.members:
            s = _score(key, m)
            if s > best_score or (s == best_score and best is not None and m.id < best.id):
                best, best_score = m, s
        return best

    def __contains__(self, member_id: object) -> bool:
        return any(m.id == member_id for m in self.members)
