"""Prometheus metrics. Label values come only from config (site names) and core enums, never from a URL or a
client address, so cardinality stays bounded whatever clients send.

With several worker processes, PROMETHEUS_MULTIPROC_DIR is set before this module is imported (server.serve)
and the admin listener aggregates every worker's values with the client's multiprocess collector.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _mp
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from edgecache import __version__
from edgecache.metricturn import TurnCounter, TurnHistogram, apply


def _counter(name: str, documentation: str, labelnames: tuple[str, ...] | list[str] = ()) -> TurnCounter:
    return TurnCounter(Counter(name, documentation, labelnames))


def _histogram(name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...]) -> TurnHistogram:
    return TurnHistogram(Histogram(name, documentation, labelnames, buckets=buckets))


_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = _counter(
    "edgecache_requests_total", "Client requests answered", ["site", "method", "status_class", "cache_status"]
)
_SERVED = _counter("edgecache_served_bytes_total", "Body bytes sent to clients by where they came from", ["source"])


@dataclass(slots=True)
class Sources:
    """One request's served body bytes by where they came from: the access log's `upstream` is named from it."""

    cache: int = 0
    origin: int = 0
    peer: int = 0
    joined: bool = False  # it waited on another request's origin fetch: counted once (collapsed)
    # Whom its fetches asked (OriginResponse.addr, OriginError.tried), each once: the access log's upstream_addr.
    addrs: tuple[str, ...] = ()

    def asked(self, addr: str | None) -> None:
        """Note an answer from `addr` (host:port, or those tried in turn): each told once. An origin request tries a
        site's origins in their order, so a request notes at most as many as its site has (and its peers)."""
        if addr and addr not in self.addrs:
            self.addrs += (addr,)


# The request being answered in this task (observe.start sets it): the served-bytes counter adds to it as well,
# so where a response's bytes came from is known exactly, from the very increments the metric is made of.
SOURCES: ContextVar[Sources | None] = ContextVar("edgecache_sources", default=None)
_AS = {"memory": "cache", "disk": "cache", "origin": "origin", "peer": "peer"}


class _ServedChild:
    __slots__ = ("_child", "_field")

    def __init__(self, source: str) -> None:
        self._child = _SERVED.labels(source)
        self._field = _AS[source]

    @property
    def counter(self) -> TurnCounter:
        """The counter's child alone: what a bundle of the fast path adds to (it answers no traced request)."""
        child: TurnCounter = self._child
        return child

    def inc(self, amount: int = 1) -> None:
        self._child.inc(amount)
        sources = SOURCES.get()
        if sources is not None:
            setattr(sources, self._field, getattr(sources, self._field) + amount)


class _Served:
    """edgecache_served_bytes_total{source}: its children also count into the current request's Sources."""

    def labels(self, source: str) -> _ServedChild:
        return _ServedChild(source)


BYTES_SERVED = _Served()
SITE_SERVED = _counter(
    "edgecache_site_served_bytes_total",
    "Body bytes sent to clients by site and upstream (cache, origin, peer, cache+origin; - for the node's own "
    "answers): the sum of the access log's bytes, but for requests a peer forwarded (the peer counts them) and the "
    "node's own prefetch (edgecache_prefetch_bytes_total)",
    ["site", "upstream"],
)
TTFB = _histogram("edgecache_ttfb_seconds", "Client time to first byte", ["cache_status"], buckets=_LATENCY)
ORIGIN_REQUESTS = _counter("edgecache_origin_requests_total", "Requests sent to origins", ["site", "status_class"])
ORIGIN_BYTES = _counter("edgecache_origin_bytes_total", "Body bytes received from origins", ["site"])
ORIGIN_ERRORS = _counter("edgecache_origin_errors_total", "Origin failures", ["site", "kind"])
ORIGIN_SHARE_WAITS = _counter(
    "edgecache_origin_share_waits_total",
    "Origin requests that waited because their site held its share of a worker's origin connections",
    ["site"],
)
ORIGIN_LATENCY = _histogram(
    "edgecache_origin_response_seconds", "Origin time to response head", ["site"], buckets=_LATENCY
)
COLLAPSED = _counter(
    "edgecache_collapsed_waits_total",
    "Requests that joined another request's origin fetch: once a request, however many of its slices did",
)


def collapsed(request: Sources | None) -> None:
    """edgecache_collapsed_waits_total for a request that waits on another request's origin fetch (a fill in this
    process, or another worker's): once per request, whichever of its slices or tries wait, as its Sources
    (`request`) remembers; each time for a wait of no request's."""
    if request is not None:
        if request.joined:
            return
        request.joined = True
    COLLAPSED.inc()


# One per request answered miss, expired or partial (core.status.MISSES), by its one cause (core.status.MissCause).
MISSES = _counter("edgecache_misses_total", "Requests that were misses, by site and cause", ["site", "cause"])
FILLS = _counter("edgecache_fills_total", "Origin fetches started to fill the cache")
# core.objectsize: once a fill, when its head gives a length over the limit, or its body of unknown length passes it.
TOO_LARGE = _counter(
    "edgecache_too_large_total",
    "Origin answers over the largest copy stored whole (cache.max_object_size): served, not stored",
)
# proxy.fillmemory: what fills hold of cache.fill_memory, the fills waiting for their share, and how waits ended.
FILL_MEMORY_BYTES = Gauge(
    "edgecache_fill_memory_bytes", "Bytes fills have taken of their pool", ["pool"], multiprocess_mode="livesum"
)
FILL_MEMORY_LIMIT = Gauge(
    "edgecache_fill_memory_limit_bytes",
    "What fills may take at once, by pool (shared: fills of objects stored; paced: private answers)",
    ["pool"],
    multiprocess_mode="livesum",
)
FILL_MEMORY_WAITING = Gauge(
    "edgecache_fill_memory_waiting",
    "Fills waiting for their share of fill memory",
    ["pool"],
    multiprocess_mode="livesum",
)
FILL_MEMORY_WAITS = _counter(
    "edgecache_fill_memory_waits_total", "Fills that waited for fill memory, by pool and outcome", ["pool", "outcome"]
)
MEMORY_BYTES = Gauge("edgecache_memory_tier_bytes", "Bytes held by the memory tier", multiprocess_mode="livesum")
MEMORY_BUDGET = Gauge("edgecache_memory_tier_budget_bytes", "Memory tier byte budget", multiprocess_mode="livesum")
MEMORY_LIMIT = Gauge(
    "edgecache_memory_tier_limit_bytes",
    "What the memory tier holds at most now: its budget, less while the worker's RSS is over budget + 64 MiB",
    multiprocess_mode="livesum",
)
MEMORY_OBJECTS = Gauge("edgecache_memory_tier_objects", "Slices held by the memory tier", multiprocess_mode="livesum")
MEMORY_EVICTIONS = _counter("edgecache_memory_tier_evictions_total", "Slices evicted from the memory tier")
# cache.tiers = "exclusive" (storage.tiers): what memory evicted, written to disk, dropped past the write-back's
# bound (or on a failed write), or not written because its copy is no longer the object's (purged, replaced).
TIER_SPILLS = _counter(
    "edgecache_tier_spills_total", "Slices the memory tier evicted, by what became of them", ["outcome"]
)
# At a graceful stop, exclusive tiers write what only memory holds to disk (storage.tiers.keep_on_stop): written,
# not written past its time or byte bound (late, no_room), on a failed write (dropped), or stale as a spill is.
TIER_STOP_SAVES = _counter(
    "edgecache_tier_stop_saves_total", "Slices only memory held at a stop, by what became of them", ["outcome"]
)
MEMORY_ADMISSIONS = _counter("edgecache_memory_tier_admissions_total", "Slices admitted to the memory tier")
DISK_BYTES = Gauge("edgecache_disk_tier_bytes", "Bytes held by the disk tier", multiprocess_mode="livemax")
DISK_BUDGET = Gauge("edgecache_disk_tier_budget_bytes", "Disk tier byte budget", multiprocess_mode="max")
DISK_ERRORS = _counter("edgecache_disk_tier_errors_total", "Disk tier operations that failed")
# Each disk of the disk tier (storage/disks.py), labelled by its path as the config gives it.
DISK_USED = Gauge("edgecache_disk_bytes", "Bytes held on the disk", ["disk"], multiprocess_mode="livemax")
DISK_SIZE = Gauge(
    "edgecache_disk_budget_bytes", "The disk's byte budget (cache.disks size)", ["disk"], multiprocess_mode="max"
)
DISK_UP = Gauge(
    "edgecache_disk_up",
    "1 while the disk is in service; 0 from its first I/O failure until a reload finds it working (the lowest "
    "of the workers)",
    ["disk"],
    multiprocess_mode="livemin",
)
DISK_OPS = _counter(
    "edgecache_disk_operations_total", "Disk tier operations by disk and kind (read, write)", ["disk", "op"]
)
DISK_OP_ERRORS = _counter("edgecache_disk_errors_total", "Disk tier operations that failed, by disk", ["disk"])
DISK_FAILURES = _counter(
    "edgecache_disk_failures_total", "Times a worker took the disk out of service after an I/O failure", ["disk"]
)
# A gauge rather than an Info: Info does not work in the client's multiprocess mode.
BUILD = Gauge("edgecache_build_info", "Version of this edgecache", ["version", "python"], multiprocess_mode="max")


def mark_build() -> None:
    """edgecache_build_info, set by each process that serves: a worker forked from the fork server sets its own (the
    fork server's value files are removed: edgecache.forkbase), as one imported anew set it on import."""
    BUILD.labels(__version__, platform.python_version()).set(1)


mark_build()


class _Current:
    """Every sample of `source`, but edgecache_peer_up only for the cluster's members now, and a series labelled with
    a site only for the config's sites now (and "-", no site): a child cannot be taken out of the workers' shared
    files, and a member a reload removed stayed "up" there for good, a site a reload removed kept its series."""

    def __init__(self, source: Any, members: Collection[str] | None, sites: Collection[str] | None) -> None:
        self.source, self.members, self.sites = source, members, sites

    def collect(self) -> Iterator[Metric]:
        for metric in self.source.collect():
            if self.members is not None and metric.name == "edgecache_peer_up":
                metric.samples = [s for s in metric.samples if s.labels.get("peer") in self.members]
            if self.sites is not None:
                shown = {*self.sites, "-"}
                metric.samples = [s for s in metric.samples if s.labels.get("site", "-") in shown]
            yield metric


def exposition(members: Collection[str] | None = None, sites: Collection[str] | None = None) -> tuple[bytes, str]:
    """The text format for /metrics: this process, or every worker when running several; `members`: the
    cluster's (ClusterView), whose peers alone are shown up or down; `sites`: the config's site names, whose series
    alone are shown."""
    apply()  # this process's increments of the current turn
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source: Any = CollectorRegistry()
        _mp.MultiProcessCollector(source)  # type: ignore[no-untyped-call]
        for counter in PARENT_COUNTERS:  # read from the parent's memory, not from the workers' files
            source.register(counter)
    else:
        source = REGISTRY
    if members is not None or sites is not None:
        filtered = CollectorRegistry()
        filtered.register(_Current(source, members, sites))
        source = filtered
    try:
        body = generate_latest(source)
    except FileNotFoundError:  # a dead worker's file the parent folded meanwhile (supervisor.fold_dead): once more
        body = generate_latest(source)
    return body, "text/plain; version=0.0.4; charset=utf-8"


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


# "livemax": the live workers' view. A dead worker's file of a plain "max" gauge stays in the directory (only the
# live modes' files are removed when a worker is gone), so its last 1 would show the peer up for good.
PEER_UP = Gauge("edgecache_peer_up", "1 when this node sees the peer as up", ["peer"], multiprocess_mode="livemax")
# A forward to a peer is counted here, never as an origin request or origin bytes (origin.OriginClient.to_peer).
PEER_FORWARDED = _counter(
    "edgecache_peer_forwarded_requests_total",
    "Requests sent to a peer, by site: forwards to an object's owner and a new owner's look-asides to the previous one",
    ["peer", "site"],
)
PEER_BYTES = _counter(
    "edgecache_peer_forwarded_bytes_total", "Body bytes received from owners, by site", ["peer", "site"]
)
# Requests per write to a peer's connection (proxy.peerpool: those of one loop turn, pipelined, at most DEPTH): how
# much pipelining saves (a batch of n costs 1/n of a write and a read on each side). No labels: one series.
PEER_BATCH = _histogram(
    "edgecache_peer_batch_requests",
    "Forwarded requests written to a peer's connection in one write (pipelined in one loop turn)",
    [],
    buckets=(1, 2, 3, 4, 6, 8),
)
PEER_LATENCY = _histogram(
    "edgecache_peer_response_seconds",
    "Time to the response head of requests forwarded to owners",
    ["peer"],
    buckets=_LATENCY,
)
PEER_ERRORS = _counter(
    "edgecache_peer_errors_total",
    "Failed forwards by peer and kind: connect (refused), timeout, reset (the connection broke), malformed (its "
    "answer was not HTTP, or went past a bound), 5xx (the owner answered 5xx, its own error or its origin's); "
    "health: failed health checks",
    ["peer", "kind"],
)
# Ring continuity (core.lookaside): an owner's misses asked of the previous owner before the origin, by outcome.
# multiprocess "livemin": each worker reads the peers' purge logs itself; one that cannot is what the gauge shows.
PEER_PURGE_LOG = Gauge(
    "edgecache_peer_purge_log_reachable",
    "1 when the peer's purge log answered this node's last purge-sync round; 0 when it could not be read "
    "(unreachable, refused, no admin listener or no log). While 0 this node relays none of the peer's copies a "
    "purge applied here since covers, and, once its own log no longer holds the purges the peer last had, none at "
    "all: it fills them itself (edgecache_peer_purge_behind_total)",
    ["peer"],
    multiprocess_mode="livemin",
)
PEER_PURGE_BEHIND = _counter(
    "edgecache_peer_purge_behind_total",
    "Objects another node owns that this node answered itself (its cache or the origin) rather than relay that "
    "owner's copy: the owner had not applied a purge of them applied here. By owner and the purge's kind (url, "
    "prefix, site; all: it lacks purges this node no longer keeps). Each object once per answer of its purge log",
    ["peer", "kind"],
)
PEER_LOOKASIDE = _counter(
    "edgecache_peer_lookaside_total",
    "Misses of an owner asked of the previous owner's cache first, by peer and outcome: hit (its bytes stored), "
    "miss, other-version, stale (not fresh here, or not for a shared cache: the origin was asked), unusable, "
    "error, behind (it may lack a purge applied here that covers the object; the "
    "origin was asked instead)",
    ["peer", "outcome"],
)
PEER_COPIES = _counter(
    "edgecache_peer_copy_fills_total",
    "Fills of a hot object's copy (core.popularity) asked of its owner, by peer and outcome: hit (the owner's answer "
    "taken: stored, or served once when no shared cache may store it), stale (not fresh here or for its viewer's "
    "request: the origin was asked), error (refused, timed out, broken, or taken back as a loop: the origin was "
    "asked), behind (not asked: it may lack a purge applied here that covers the object)",
    ["peer", "outcome"],
)

PURGES = _counter("edgecache_purges_total", "Purges applied on this node", ["kind", "mode"])
PURGE_BEHIND = Gauge(
    "edgecache_purge_catching_up",
    "1 while this node may have missed purges (it revalidates what it stored before then); the highest of the workers",
    multiprocess_mode="livemax",
)
PURGE_VECTOR = Gauge(
    "edgecache_purge_vector_origins",
    "Origins in the purge vector this node sends its peers (live) and in its list of pruned ones (retired): peers"
    " refuse either past 8192 (core.purge.MAX_ORIGINS), and purge sync with them stops",
    ["state"],
    multiprocess_mode="livemax",
)
PURGE_CATCHUPS = _counter(
    "edgecache_purge_catchup_total",
    "Catching up on missed purges: entries (purges taken from peers) and reset (every site purged: too far behind)",
    ["kind"],
)
PREFETCH_JOBS = Gauge("edgecache_prefetch_jobs", "Prefetch jobs by state", ["state"], multiprocess_mode="livemax")
PREFETCH_URLS = _counter("edgecache_prefetch_urls_total", "Prefetch URLs finished, by outcome", ["outcome"])
PREFETCH_REQUESTS = _counter(
    "edgecache_prefetch_requests_total",
    "Requests of the node's own prefetch jobs (never in edgecache_requests_total or edgecache_misses_total)",
    ["site", "status_class", "cache_status"],
)
PREFETCH_BYTES = _counter("edgecache_prefetch_bytes_total", "Body bytes read by prefetch jobs")
SLOW_CLIENTS = _counter("edgecache_slow_client_disconnects_total", "Connections cut: the client stopped reading")
FAST_PATH = _counter(
    "edgecache_fast_path_total",
    "Requests answered on the fast path (answered) or relayed to their owner (forwarded); connections it handed to "
    "the full handler (handed_off) and took back from it once answered (taken_back)",
    ["outcome"],
)
HEADER_TIMEOUTS = _counter("edgecache_header_timeouts_total", "Connections closed: a request head took too long")
DISK_CORRUPT = _counter(
    "edgecache_disk_corrupt_total",
    "Values read from the disk tier with a wrong length or checksum, or whose file was gone, dropped",
)
PURGED_RECORDS_DROPPED = _counter(
    "edgecache_purged_records_dropped_total",
    "Records of purged URLs a disk dropped past cache.purged_records (or that failed their checksum): the objects "
    "of each one's bucket without a record of their own are misses once",
)
REJECTED_CONNECTIONS = _counter(
    "edgecache_rejected_connections_total", "Connections answered 503 at once: max_connections were open"
)
SHED_REQUESTS = _counter(
    "edgecache_shed_requests_total", "Requests answered 503 at once: max_requests were in flight (server.max_requests)"
)
# The load the worker's limits judge, sampled every cache.stats_interval (FastServer.sample), never counted again on
# the hot path: the gauges are the very counts the door (max_connections) and the 503 past max_requests read.
CLIENT_CONNECTIONS = Gauge(
    "edgecache_client_connections",
    "Client connections open, as server.max_connections counts them: plain and TLS (handshakes in progress too), "
    "on the fast path or the full handler, not those refused at the door nor those lingering after their answer",
    multiprocess_mode="livesum",
)
CLIENT_CONNECTIONS_LIMIT = Gauge(
    "edgecache_client_connections_limit",
    "Client connections open past which new ones get 503 and close: server.max_connections per worker (lower when "
    "the file descriptor limit would run out first), summed over the workers",
    multiprocess_mode="livesum",
)
REQUESTS_IN_FLIGHT = Gauge(
    "edgecache_requests_in_flight",
    "Requests in flight, as server.max_requests counts them: every request waiting on an origin, a peer, the disk "
    "or the full handler (a hit the fast path answers from memory at once is never in flight)",
    multiprocess_mode="livesum",
)
REQUESTS_IN_FLIGHT_LIMIT = Gauge(
    "edgecache_requests_in_flight_limit",
    "Requests in flight past which new ones get 503: server.max_requests per worker, summed over the workers",
    multiprocess_mode="livesum",
)
ACCESS_LOG_DROPPED = _counter(
    "edgecache_access_log_dropped_total", "Access-log lines dropped: the writer's queue was full, or writing failed"
)
REQUEST_BODY_TIMEOUTS = _counter(
    "edgecache_request_body_timeouts_total", "Requests answered 408: their body stalled for origin.body_timeout"
)


class ParentCounter:
    """A counter the parent process keeps, which exports nothing and never imports this module (it would make value
    files of its own): each worker is given `source`, the counts by label value, and shows them as they are at each
    scrape. Its own collector, not a prometheus_client Counter: added up over the workers' files, every worker's copy
    of the one count would be counted."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.source: Callable[[], Mapping[str, int]] | None = None  # none in a process the parent did not start

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        if self.source is not None:
            family = self._family()
            for value, count in self.source().items():
                family.add_metric([value], count)
            yield family


FORK_SERVER_RESTARTS = ParentCounter(
    "edgecache_fork_server_restarts",
    "Fork servers (what forks each worker) the parent process replaced since the node started: ended (exited, "
    "crashed, killed) or stalled (forked no worker within its deadline, and killed); no worker is lost to either",
    "reason",
)
WORKER_RESTARTS = ParentCounter(
    "edgecache_worker_restarts",
    "Workers the parent process replaced since the node started: died (exited, crashed, killed) or stuck (loop "
    "stopped for server.watchdog seconds)",
    "reason",
)
PARENT_COUNTERS = (FORK_SERVER_RESTARTS, WORKER_RESTARTS)
for _parent in PARENT_COUNTERS:
    REGISTRY.register(_parent)
