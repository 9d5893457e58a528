"""What a fill is asked for: the request path builds a FillRequest, and every request a fill sends is made from it."""

from __future__ import annotations

from dataclasses import dataclass

from edgecache.config import Site
from edgecache.core.freshness import Policy
from edgecache.core.headers import Headers
from edgecache.core.keys import CacheKey
from edgecache.core.ring import Member

NO_KEY = CacheKey("", "", "/", "")


@dataclass(frozen=True, slots=True)
class FillRequest:
    """Who asks, for what: enough to build the origin request of a fill."""

    site: Site
    entry_key: str
    target: str
    host: str
    headers: Headers  # the client's request fields
    client_ip: str
    policy: Policy
    primary: str = ""
    generation: str = ""  # of the primary record the entry key was made with
    scope: str = ""  # generations of the purged site and directories above the object
    host_key: str = ""  # the normalised host of the cache key
    path: str = ""  # the normalised path of the cache key
    key: CacheKey = NO_KEY  # what a fill asks the origin for (core.forward.fill_request)
    # The Vary of the record the request was decided with. Not what a fill sends: that is the entry key's fields
    # (keys.keyed_fields), and a request served another variant's copy (EdgeHandler._serve_head) keeps this one.
    vary: tuple[str, ...] = ()
    look_aside: bool = False  # the owner asks this node's cache (core.lookaside): answered from it, never filled
    # A hot object on a node that does not own it (core.popularity): filled from its owner, kept in memory only.
    spread_from: Member | None = None
    # A soft purge of the object at this time (0: none): a fill asked before it brings the purged bytes, and is not
    # joined (FillRegistry.find).
    soft_before: float = 0.0
    # What the request found when it was decided (core.status.found_of), for the fwd of its answer's Cache-Status: by
    # the time that is written, a revalidation may have made a stale entry fresh.
    found: str = ""

    @property
    def record_key(self) -> str:
        """The primary record's key: `primary`, or the entry key's first line when it was not given (a request
        made from the key alone: a prefetch, a peer's)."""
        return self.primary or self.entry_key.split("\n", 1)[0]
