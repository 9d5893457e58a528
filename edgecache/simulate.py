"""Capacity planning from a node's own access log: the log replayed through the tiers' policy classes at many budgets.

A line the node answered from its cache or a fill (a GET, 200 or 206 of one range) becomes the slices it touched:
its cache key is made as the node makes it (core.keys.make_key with the site's key_query), its bytes are cut into
slices as the node cuts them (core.ranges.slice_indices). Each slice goes through the tiers as in the Store: a
memory hit touches the memory policy; a disk hit touches the disk policy and is offered to memory; a miss is
fetched whole from the origin and offered to both. A line the node passed to the origin (cache "pass") is served
and fetched at any budget; one it forwarded to the owner node (cache "peer") is not this node's cache's, and is
only counted.

The memory tier is the node's own policy (storage.policy.make_policy, as MemoryTier builds it). The disk tier's
policy is a parameter, a factory taking a budget (DISK_POLICIES); "node" is the disk tier's own, DiskPolicy, the
class DiskTier runs over its index; "fifo" models the disk tier before that index (diskcache evicted the least
recently stored, and a read did not refresh an entry).

What a log line does not say is modelled simply. An object's length is known only from a line that reaches its
end (a 200, an open range such as "bytes=100-", a range cut short); any other slice is taken to be a whole slice
(this sizes what the policies hold, never the bytes counted as served). Freshness is not modelled: a slice stays
a hit until evicted, where the node fetches an expired object again whatever its disk. One memory tier is modelled:
`cache.memory` is per worker process, and each worker has its own. Every disk hit is offered to memory, as the
full handler does; the fast path offers at most one every fastserver.PROMOTE_SECONDS per worker, so on a busy node
the memory tier takes fewer of them than here (what it serves is a hit either way; only what it keeps differs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from edgecache.core.keys import BadTarget, make_key
from edgecache.core.ranges import ByteRange, parse_range_header, slice_indices
from edgecache.core.route import normalise_host
from edgecache.storage.policy import DiskPolicy, EvictionPolicy, LRUPolicy, S3FIFOPolicy, make_policy
from edgecache.usagecmd import parse_record

PolicyFactory = Callable[[int], EvictionPolicy]
ALL_QUERY = ("*",)  # a site the config does not name (or no config): every query parameter is keyed


class FIFOPolicy(LRUPolicy):
    """The disk tier before its own index: diskcache's least-recently-stored eviction (a hit refreshes nothing)."""

    def touch(self, key: str) -> None:
        return None


# The disk tier takes a value of any size up to its whole budget, so the disk models do too (max_item_fraction 1).
DISK_POLICIES: dict[str, PolicyFactory] = {
    "node": DiskPolicy,
    "fifo": lambda budget: FIFOPolicy(budget, 1.0),
    "lru": lambda budget: LRUPolicy(budget, 1.0),
    "s3fifo": lambda budget: S3FIFOPolicy(budget, 1.0),
}
DEFAULT_DISK_POLICY = "node"  # what DiskTier runs


def memory_policy(name: str) -> PolicyFactory:
    """The memory tier's policy by its config name, with the same largest item as MemoryTier gives it."""
    make_policy(name, 0)  # an unknown name fails here, before any line is read
    return lambda budget: make_policy(name, budget)


class Kind(StrEnum):
    """What the replay did with a line."""

    SIMULATED = "simulated"  # its slices went through the tiers
    PASS = "pass"  # served from the origin at any budget (not cacheable): served and origin bytes
    PEER = "peer"  # forwarded to the node that owns it: not this node's cache, not in the ratios
    OTHER = "other"  # nothing of the cache's: HEAD, errors, 304, several ranges, a suffix range
    MALFORMED = "malformed"  # not one of our records: not JSON, or a field of the wrong type


@dataclass(frozen=True, slots=True)
class Request:
    """The bytes a line served of one object: first..last of `key`, and the object's length where the line shows
    it (None: the object goes on past `last`, or may)."""

    key: str
    first: int
    last: int
    end: int | None


def _text(record: Mapping[str, object], name: str) -> str | None:
    value = record.get(name)
    return value if isinstance(value, str) else None


# The most bytes one line may say it served: a tebibyte, past any object a node serves in one answer. A line
# past it is not one of ours; its slices (bytes / slice of them, each replayed) would keep a replay going for
# ever: a line of "bytes": 1e30 did.
MAX_LINE_BYTES = 2**40


def _count(record: Mapping[str, object], name: str) -> int | None:
    value = record.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def classify(record: Mapping[str, object], key_query: Mapping[str, tuple[str, ...]]) -> Request | Kind:
    """The bytes `record` served, or why it is not simulated. `key_query` holds the sites' key_query by name."""
    site, host, path = _text(record, "site"), _text(record, "host"), _text(record, "path")
    method, status, nbytes = _text(record, "method"), _count(record, "status"), _count(record, "bytes")
    rng, cache = record.get("range"), record.get("cache")
    if site is None or host is None or path is None or method is None:
        return Kind.MALFORMED
    if status is None or nbytes is None or nbytes > MAX_LINE_BYTES or not isinstance(rng, str | None):
        return Kind.MALFORMED
    if cache == "peer":
        return Kind.PEER
    if cache == "pass":
        return Kind.PASS
    name = normalise_host(host)
    if method != "GET" or status not in (200, 206) or nbytes == 0 or name is None:
        return Kind.OTHER
    try:
        key = make_key(site, name, path, key_query.get(site, ALL_QUERY)).primary
    except BadTarget:
        return Kind.OTHER
    if status == 200:
        return Request(key, 0, nbytes - 1, nbytes)
    specs = parse_range_header(rng)
    if specs is None or len(specs) != 1 or specs[0].first is None:
        return Kind.OTHER  # multipart (its bytes hold boundaries), or a suffix of a length the line does not give
    first, last = specs[0].first, specs[0].first + nbytes - 1
    reached_end = specs[0].last is None or last < specs[0].last
    return Request(key, first, last, last + 1 if reached_end else None)


@dataclass(frozen=True, slots=True)
class Touch:
    name: str  # the slice's key in the policies
    size: int  # what the slice holds (as much as the line tells)
    served: int  # the bytes of it the line served


def touches(req: Request, slice_size: int) -> Iterator[Touch]:
    """The slices `req` reads, as the node slices an object."""
    for index in slice_indices(ByteRange(req.first, req.last), slice_size):
        base = index * slice_size
        size = slice_size if req.end is None else min(slice_size, req.end - base)
        served = min(req.last + 1, base + slice_size) - max(req.first, base)
        # '#' never stands in a key's target (normalise_target drops the fragment): the name is unambiguous.
        yield Touch(f"{req.key}#{index}", size, served)


@dataclass(frozen=True, slots=True)
class Budget:
    memory: int
    disk: int


@dataclass
class Tiers:
    """The memory tier in front of the disk tier at one budget pair, and what they served."""

    budget: Budget
    memory: EvictionPolicy
    disk: EvictionPolicy
    requests: int = 0
    hits: int = 0  # requests whose every slice was in a tier
    served_bytes: int = 0
    hit_bytes: int = 0
    origin_bytes: int = 0  # whole slices fetched on misses, and passed bytes

    @property
    def request_hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.served_bytes if self.served_bytes else 0.0

    def request(self, slices: Iterable[Touch]) -> None:
        missed = 0
        for t in slices:
            self.served_bytes += t.served
            if self._read(t):
                self.hit_bytes += t.served
            else:
                missed += 1
        self.requests += 1
        self.hits += missed == 0

    def passed(self, nbytes: int) -> None:
        self.requests += 1
        self.served_bytes += nbytes
        self.origin_bytes += nbytes

    def _read(self, t: Touch) -> bool:
        """One slice read, as Store and the engine read it: memory, then disk (offered to memory), then a fill."""
        if t.name in self.memory:
            self.memory.touch(t.name)
            return True
        if t.name in self.disk:
            self.disk.touch(t.name)
            self.memory.admit(t.name, t.size)
            return True
        self.origin_bytes += t.size
        self.memory.admit(t.name, t.size)
        self.disk.admit(t.name, t.size)
        return False


@dataclass
class Replay:
    runs: list[Tiers]
    lines: Counter[Kind] = field(default_factory=Counter)


def replay(
    lines: Iterable[bytes],
    budgets: Sequence[Budget],
    slice_size: int,
    memory: PolicyFactory,
    disk: PolicyFactory,
    key_query: Mapping[str, tuple[str, ...]] | None = None,
) -> Replay:
    """Every line through every budget pair, in one pass: memory holds the policies' state, not the log."""
    result = Replay([Tiers(b, memory(b.memory), disk(b.disk)) for b in budgets])
    sites = key_query or {}
    for raw in lines:
        record = parse_record(raw)
        what = classify(record, sites) if record is not None else Kind.MALFORMED
        if isinstance(what, Request):
            for run in result.runs:
                run.request(touches(what, slice_size))  # made again for each: never a line's slices held at once
            result.lines[Kind.SIMULATED] += 1
            continue
        if what is Kind.PASS:
            assert record is not None  # classify() checked its bytes
            for run in result.runs:
                run.passed(_count(record, "bytes") or 0)
        result.lines[what] += 1
    return result
