"""The largest copy the cache stores whole (cache.max_object_size, or a site's sites.cache.max_object_size).

Traffic Server's proxy.config.cache.max_doc_size and Squid's maximum_object_size bound the object's full length
because both fetch and store an object as one unit. Here the unit is the slice: an object with a validator whose
origin honours Range is fetched a run of slices at a time, only those its viewers ask for, each slice admitted and
evicted on its own by the tiers' policies (S3-FIFO keeps a one-time scan out of the main queue), as nginx's slice
module stores each slice as an entry and bounds none by its object's size. Bounding such objects would refuse the
parts of a film a cache of a few films' size is for. What this bounds is a copy that can only be taken whole: an
object with no validator, an origin that ignores Range, a status other than 200 (ObjectMeta.whole), and a body of
unknown length. Its fill takes the object from its first byte to its last, for every worker waiting on it, whatever
its viewers read; such a copy of most of the disk budget would evict most of the cache at once. The bound is its full
length (Content-Length, the complete length of a 206's Content-Range), or, for a body of unknown length, the bytes
that have come so far: it is stored only if it ends within the limit.

A copy over the limit is still answered, streamed from its origin to the requests that asked, and never stored
(proxy.engine, proxy.serving.from_fill). Nothing here raises.
"""

from __future__ import annotations

from edgecache.core.freshness import Policy

# The reason a fill's answer is not stored (FillHead.reason), its answer's Cache-Status detail and the log's.
TOO_LARGE = "too-large"


def limit_of(policy: Policy, node: int) -> int:
    """The largest copy a site stores whole, in bytes: its own limit (sites.cache.max_object_size), else the node's
    (cache.max_object_size, or its default: an eighth of the disk budget)."""
    return policy.max_object_size if policy.max_object_size is not None else node


def fits(length: int, limit: int, whole: bool = True) -> bool:
    """May a copy of `length` bytes be stored under `limit`? One stored slice by slice (not `whole`) always may. -1 (a
    length not known yet) may, so far: the body is judged again by the bytes that have come (Engine._past_bound)."""
    return not whole or length <= limit
