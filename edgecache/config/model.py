"""The configuration as the rest of the node sees it: frozen dataclasses, built by edgecache.config."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any

from edgecache.core.freshness import Policy
from edgecache.core.ring import Member
from edgecache.core.signing import Signing

# The least a worker's memos of decisions hold (CacheSettings.memo_bytes): some 1,400 plain heads.
MEMO_FLOOR = 4 * 2**20
# The least a worker keeps at hand of its objects' metadata (CacheSettings.meta_bytes): some 6,000 objects.
META_FLOOR = 16 * 2**20
# The records of purged URLs a disk keeps (CacheSettings.purged_records): some 26 MB of its database, past its budget.
PURGED_RECORDS = 100_000


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        # As a URL needs it: the admin commands and the log put it after http://.
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: Path  # PEM certificate chain
    key: Path  # PEM private key


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    key_query: tuple[str, ...] = ("*",)  # query parameters that are part of the key; "*" = all of them
    origin_host: str | None = None  # Host sent to origin; None = the host of the cache key (never the raw Host)
    # Client fields a fill sends although the key does not hold them (core.forward.unkeyed_fields): only for
    # fields the origin never builds its answer from, such as a trace id. Empty: a fill sends nothing unkeyed.
    forward_fields: tuple[str, ...] = ()
    policy: Policy = field(default_factory=Policy)  # the choices RFC 9111 leaves to a shared cache
    allow: tuple[IPv4Network | IPv6Network, ...] = ()  # client subnets served (the ISP's customers); empty: all
    tls: TLSFiles | None = None  # the certificate its HTTPS clients get (chosen by SNI)
    signing: Signing | None = None  # signed URLs: requests without a valid token get 403 (core.signing)
    # Most connections of each of a worker's origin pools the site may hold at once (proxy.shares.share);
    # None: all of them on a node of one site, else max_connections - max_connections // 4.
    origin_connections: int | None = None

    def __post_init__(self) -> None:
        # The one place a signed site's token parameters become "!name" in its key_query (core.keys): so every key
        # made for the site, of a request, a purge or an invalidation, leaves them out, and no origin sees them.
        if self.signing is not None:
            marks = tuple(f"!{n}" for n in self.signing.params if f"!{n}" not in self.key_query)
            object.__setattr__(self, "key_query", (*self.key_query, *marks))

    def allows(self, client: str) -> bool:
        if not self.allow:
            return True
        try:
            address = ip_address(client)
        except ValueError:
            return False
        return any(address in net for net in self.allow)


@dataclass(frozen=True, slots=True)
class Disk:
    """One directory of the disk tier (storage/disks.py) and its byte budget."""

    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class CacheSettings:
    dir: Path  # with several disks, the first one's: the node's own files (purge log, epoch) live there
    memory_bytes: int = 256 * 2**20
    disk_bytes: int = 4 * 2**30  # with several disks, their sum
    slice_bytes: int = 2**20
    fill_slices: int = 4  # most slices one origin request may fill
    memory_policy: str = "s3fifo"
    # A worker's RSS is kept within memory_bytes + this by shrinking the memory tier (to half at most); 0: off.
    memory_headroom: int = 64 * 2**20
    # What a worker's fills hold at once, all together (proxy.fillmemory): beyond it, fills wait for their turn.
    # 0: half the memory tier, which the RSS bound may take from the tier (it shrinks it to half at most), so fills
    # at their budget keep a worker within memory_bytes + memory_headroom; four runs of slices at least, so that
    # fills of stored objects never take turns one at a time (as they did with less than a run in the shared pool).
    fill_memory: int = 0
    disks: tuple[Disk, ...] = ()  # cache.disks as given; empty for the single form (dir and disk_bytes)
    # "inclusive": a fill is written to both tiers. "exclusive": a slice is in one tier at a time (storage.tiers):
    # what memory keeps is not written to disk until memory evicts it; one worker only.
    tiers: str = "inclusive"
    # Exclusive tiers: seconds a graceful stop spends writing the slices only memory holds to disk, hottest first
    # (storage.tiers.keep_on_stop), after the drain; 0: none, a restart loses them as a kill -9 does.
    save_on_stop: float = 10.0
    # Seconds a worker's lease on what it fetches (slices, a revalidation) lasts past its last renewal: the others
    # wait for it that long at most, then fetch themselves (storage.leases).
    lease: float = 10.0
    # Seconds between two samples of the tier gauges on /metrics (memory and disk tier bytes, objects, evictions
    # and admissions), which are sampled rather than updated on the hot path (server._sample_stats).
    stats_interval: float = 5.0
    # The largest copy stored whole, in bytes (core.objectsize); 0: an eighth of the disk budget, as object_limit says.
    max_object_size: int = 0
    # The primary records of URLs purged or invalidated that each disk keeps at most (storage.diskrecords); past it
    # the oldest goes, and a few other objects become misses once.
    purged_records: int = PURGED_RECORDS

    @property
    def object_limit(self) -> int:
        """cache.max_object_size, or its default: an eighth of the disk budget (disk_bytes, the sum of cache.disks),
        so that no copy taken whole evicts more than an eighth of what the disks hold at once."""
        return self.max_object_size or self.disk_bytes // 8

    @property
    def stop_save_seconds(self) -> float:
        """What a stop spends saving memory at most, past the drain: save_on_stop with exclusive tiers, else 0."""
        return self.save_on_stop if self.tiers == "exclusive" else 0.0

    @property
    def fill_bytes(self) -> int:
        """cache.fill_memory, or its default when not given."""
        return self.fill_memory or max(self.memory_bytes // 2, 4 * self.slice_bytes * self.fill_slices)

    @property
    def memo_bytes(self) -> int:
        """What a worker's fast path keeps of its decisions (core.memo.Pool), all its memos together: half of
        memory_headroom (of its default, 64 MiB, when 0 turns the RSS bound off), 4 MiB at least. A quarter held
        too little for an owner answering its objects both to viewers and to peers (two entries each): 3,000
        objects took 16.5 MiB of 16, and the cluster loadtest's direct long-tail hits fell from 38,000 to 29,000
        req/s as the memos turned over and over."""
        return max((self.memory_headroom or 64 * 2**20) // 2, MEMO_FLOOR)

    @property
    def meta_bytes(self) -> int:
        """What a worker keeps at hand of its objects' metadata and records (storage.store): a quarter of
        memory_headroom (of its default when 0), 16 MiB at least, about 2.8 KiB an object. Past it, each request
        for an object reads its metadata from the disk tier in a thread though its body is in memory: a fixed
        16 MiB held ~6,000 objects, and past them an owner's forwarded hits cost ~680 CPU µs instead of ~30
        (loadtest.fwdcpu). A node with a long tail of objects is given more memory_headroom."""
        return max((self.memory_headroom or 64 * 2**20) // 4, META_FLOOR)

    @property
    def meta_entries(self) -> int:
        """The most objects that metadata may be of (entries of each table), never what binds before its bytes."""
        return max(16_384, self.meta_bytes // 1024)

    @property
    def all_disks(self) -> tuple[Disk, ...]:
        """The disks values are spread over: cache.disks, or the one disk `dir` with `disk_bytes`."""
        return self.disks or (Disk(self.dir, self.disk_bytes),)


@dataclass(frozen=True, slots=True)
class OriginSettings:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_connections: int = 256
    # A request body whose client sends nothing for this long ends its pass-through with 408 (nginx's
    # client_body_timeout, which defaults to 60 s, is the same rule).
    body_timeout: float = 30.0
    # Origin connections per worker for requests with bodies, a pool of their own: clients that stall their
    # bodies hold these, never the ones cached GETs and fills use.
    body_connections: int = 64


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token of the admin API: an operator's (everything) or a provider's (its own sites)."""

    name: str  # for logs; the secret itself is never logged
    secret: str = field(repr=False)
    role: str = "provider"  # "operator" or "provider"
    sites: tuple[str, ...] = ()

    def may_act_on(self, site: str) -> bool:
        return self.role == "operator" or site in self.sites


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    self_id: str
    # Shared by the nodes: a forwarded request's hop field is signed with it (core.hop). Empty only for a cluster
    # of this node alone, which forwards nothing (config refuses a cluster of several nodes without one).
    key: bytes = field(repr=False, kw_only=True)
    # Honoured besides `key` (a peer's hop fields and its purge token), never used to sign: a key being changed,
    # so that no two nodes refuse each other's forwards while each takes the new one (config/cluster.py).
    accepted: tuple[bytes, ...] = field(default=(), repr=False, kw_only=True)
    nodes: tuple[Member, ...] = ()
    rise: int = 2
    fall: int = 3
    interval: float = 1.0  # seconds between active health checks
    timeout: float = 1.0
    dns: str | None = None  # NAME:PORT whose A/AAAA records list the nodes (a Kubernetes headless service)
    dns_interval: float = 10.0


# The Server field a node adds to an answer whose origin sent none (server.server_field): a name and no version,
# so that no scanner reads the interpreter's and libraries' versions off every answer.
SERVER_FIELD = "edgecache"


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listen: tuple[Listen, ...]
    cache: CacheSettings
    origin: OriginSettings
    sites: tuple[Site, ...]
    workers: int = 1
    client_write_timeout: float = 60.0  # a client that takes no bytes for this long loses its connection
    max_requests: int = 10_000  # requests in flight per worker before new ones get 503
    max_connections: int = 20_000  # open client connections per worker before new ones get 503 and close
    fast_path: bool = True  # fresh hits answered before the web framework is involved
    header_timeout: float = 10.0  # a request head must be complete this long after its first byte (slowloris)
    idle_timeout: float = 75.0  # an idle keep-alive connection is closed after this long
    watchdog: float = 10.0  # a worker whose loop has not turned this long is replaced (0: off)
    drain: float = 10.0  # seconds a stopping worker (SIGTERM) lets requests in flight finish; 0: cut them at once
    watch_config: float = 0.0  # seconds between looks at the config file; a change reloads as SIGHUP does; 0: off
    reload_timeout: float = 10.0  # a reload whose read of the file (and those it names) takes longer is refused
    disk_send: str = "pread"  # disk hits on the fast path: "pread" (never blocks the loop) or "sendfile"
    server_field: str = SERVER_FIELD  # the Server of answers whose origin sent none ("": none); proxy.serverfield
    tls_listen: tuple[Listen, ...] = ()  # HTTPS listeners; certificates per site by SNI
    tls: TLSFiles | None = None  # for clients that send no (or an unknown) server name
    rate_limit: float | None = None  # requests per second per client address (429 past it); None: no limit
    burst: float | None = None  # requests a client may make at once (default: one second's worth)
    # Client addresses behind a load balancer (core.clientaddr): plain listeners whose connections start with a
    # PROXY header (v1 or v2), the addresses allowed to send one (empty: any), and the proxies whose
    # X-Forwarded-For is believed (empty: none).
    proxy_protocol: tuple[Listen, ...] = ()
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...] = ()
    trusted_forwarders: tuple[IPv4Network | IPv6Network, ...] = ()
    demo_origin: Listen | None = None
    admin: Listen | None = None  # the admin listener (metrics, health, APIs); keep it on a private address
    access_log: Path | None = None
    cluster: ClusterSettings | None = None
    tokens: tuple[Token, ...] = ()
    job_retention: float = 86400.0  # seconds a finished prefetch job stays listed (and on disk)
    max_jobs: int = 1000  # prefetch jobs kept per token, in any state; its new one past this gets 429
    prefetch_slots: int = 16  # URLs fetched at once by all prefetch jobs together, given out by priority
    extra: dict[str, Any] = field(default_factory=dict)
