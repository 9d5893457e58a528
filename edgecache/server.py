"""The process: uvloop, the listeners, the shared parts (origin client, store, engine) and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import aiohttp
from aiohttp import web

from edgecache import readoff, tls
from edgecache.accesslog import AccessLog
from edgecache.cluster.purgesync import PurgeSync
from edgecache.cluster.view import ClusterView, check_health, follow_dns
from edgecache.config import Config
from edgecache.core.ratelimit import RateLimiter
from edgecache.core.rundirs import Kind
from edgecache.demo import start_demo
from edgecache.lifecycle import HELD, Restarts, as_running, begin_worker, restart_changes
from edgecache.listeners import BACKLOG, Bound, bind_listeners
from edgecache.proxy import badhead, linger, serverfield
from edgecache.proxy.engine import Engine
from edgecache.proxy.fastserver import FastServer, FastSettings
from edgecache.proxy.fillmemory import FillBudget
from edgecache.proxy.handler import EdgeHandler
from edgecache.proxy.origin import OriginClient, loop_token
from edgecache.proxy.shared import Shared
from edgecache.rssbound import bound_rss, fewer_malloc_arenas, heap_slices
from edgecache.rundirs import RunDir, hold
from edgecache.sites import FastSite, TCPListener, quiet_client_faults
from edgecache.storage.cacheid import cache_id
from edgecache.storage.disk import DiskTier
from edgecache.storage.disks import Disks
from edgecache.storage.epoch import Epoch
from edgecache.storage.memory import ENTRY_OVERHEAD, MemoryTier
from edgecache.storage.store import OPEN_FILES, Store
from edgecache.tls import Certificates, quiet_sni_faults
from edgecache.watchdog import Heartbeats, install_test_hooks, keep_alive

log = logging.getLogger(__name__)

CLOSE_EVICTED_SECONDS = 1.0  # an fstat per open slice file (at most OPEN_FILES), off the loop: about 1 ms


@dataclass(slots=True)
class Node:
    """Everything one worker process runs; built and torn down as a unit."""

    config: Config
    origin: OriginClient
    store: Store
    engine: Engine
    shared: Shared  # what the fast path and the full handler share (proxy.shared)
    handler: EdgeHandler
    access: AccessLog
    cluster: ClusterView | None = None
    certificates: Certificates | None = None
    purge_sync: PurgeSync | None = None
    state: dict[str, bool] = field(default_factory=lambda: {"listening": False, "draining": False})
    reloading: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time, in the order asked (reload)

    def __post_init__(self) -> None:
        if self.certificates is not None:  # HTTPS: a host another certificate than the SNI name's covers is refused
            self.shared.sni_misdirected = self.certificates.misdirected

    def ready(self) -> tuple[bool, str]:
        if self.state["draining"]:
            return False, "draining"
        if not self.state["listening"]:
            return False, "not listening yet"
        return True, ""


def _close_storage(store: Store, disk: Disks) -> None:
    """Blocking. The purge log's thread ends first, after any line it is writing, while its disk is still open."""
    store.close_purge_log()
    disk.close()


@asynccontextmanager
async def open_node(config: Config, worker: int = 0, epoch: Epoch | None = None) -> AsyncIterator[Node]:
    """`epoch`: the counter the node's workers share (storage.epoch), from the parent; one of its own if none."""
    loop = asyncio.get_running_loop()
    origin = OriginClient(config.origin)
    origin.sites = len(config.sites)
    await origin.start()
    disk = await loop.run_in_executor(None, Disks.open_all, config.cache.all_disks)
    memory = MemoryTier(config.cache.memory_bytes, config.cache.memory_policy, entry_overhead=ENTRY_OVERHEAD)
    store = Store(memory, disk, config.cache.meta_entries, config.cache.meta_bytes, config.cache.tiers)
    await store.note_placement(config.cache.all_disks)
    store.slice_size = config.cache.slice_bytes
    store.shared = config.workers > 1
    store.lease_seconds, store.purged_records = config.cache.lease, config.cache.purged_records
    if store.shared:
        store.attach_epoch(epoch or Epoch(), worker)
    await store.load_purges()
    c = config.cache
    fills = FillBudget(c.fill_bytes, config.origin.read_timeout)  # a turn is waited for as a slow origin's bytes
    engine = Engine(store, origin, c.slice_bytes, c.fill_slices, c.object_limit, fills)
    access = await loop.run_in_executor(None, AccessLog, config.access_log)
    cluster = ClusterView(config.cluster) if config.cluster is not None else None
    tasks = [
        asyncio.ensure_future(_sample_stats(store, c.stats_interval)),
        asyncio.ensure_future(disk.watch()),
        asyncio.ensure_future(_close_evicted(store)),
    ]
    session = aiohttp.ClientSession()
    if cluster is not None:
        if cluster.settings.dns is not None and config.admin is not None:
            cluster.dns_admin_port = config.admin.port
        tasks.append(asyncio.ensure_future(check_health(cluster, session)))
        if cluster.settings.dns is not None:
            tasks.append(asyncio.ensure_future(follow_dns(cluster)))
    replaced = serverfield.use(config.server_field)  # given back when the node closes: a test runs several
    try:
        shared = _shared(config, engine, access, cluster)
        origin.loop_token = loop_token(config, await loop.run_in_executor(None, cache_id, disk.directory))
        certificates = Certificates(config) if config.tls_listen else None
        node = Node(config, origin, store, engine, shared, EdgeHandler(shared), access, cluster, certificates)
        if cluster is not None:
            # Worker 0 applies the purges it is told of (it alone writes the purge log); a node catches up once
            # before it listens, each request bounded by cluster.timeout.
            node.purge_sync = PurgeSync(cluster, store, lambda: node.config.sites, session, applies=worker == 0)
            await node.purge_sync.round()
            tasks += [asyncio.ensure_future(node.purge_sync.run()), asyncio.ensure_future(node.purge_sync.watch())]
        yield node
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        await engine.close(config.cache.stop_save_seconds)
        store.close_files()
        await origin.close()
        await loop.run_in_executor(None, _close_storage, store, disk)
        await loop.run_in_executor(None, access.close)
        serverfield.use(replaced)


def _shared(config: Config, engine: Engine, access: AccessLog, cluster: ClusterView | None) -> Shared:
    shared = Shared(config.sites, engine, access, cluster)
    shared.write_timeout = config.client_write_timeout
    shared.max_in_flight = config.max_requests
    shared.limiter = _limiter(config)
    shared.forwarders, shared.proxy_from = config.trusted_forwarders, config.proxy_protocol_from
    return shared


async def _close_evicted(store: Store) -> None:
    """Every CLOSE_EVICTED_SECONDS, close the open slice files whose slices left the disk tier meanwhile, so their
    blocks are freed: a disk holds its budget plus at most what is evicted in that time."""
    while True:
        await asyncio.sleep(CLOSE_EVICTED_SECONDS)
        try:
            await store.close_evicted()
        except Exception:  # a bug must not end the task: evicted files would hold their disk again
            log.exception("closing the files of evicted slices failed")


async def _sample_stats(store: Store, seconds: float) -> None:
    """Tier sizes for the gauges, sampled (every cache.stats_interval) rather than updated on every operation of
    the hot path."""
    from edgecache import metrics

    last_evictions = last_admissions = 0
    metrics.DISK_BUDGET.set(store.disk.budget_bytes)
    metrics.MEMORY_BUDGET.set(store.memory.budget_bytes)
    while True:
        s = store.memory.stats()
        metrics.MEMORY_BYTES.set(s.used_bytes)
        metrics.MEMORY_LIMIT.set(store.memory.limit)
        metrics.MEMORY_OBJECTS.set(s.objects)
        metrics.MEMORY_EVICTIONS.inc(s.evictions - last_evictions)
        metrics.MEMORY_ADMISSIONS.inc(s.admissions - last_admissions)
        last_evictions, last_admissions = s.evictions, s.admissions
        with contextlib.suppress(Exception):
            metrics.DISK_BYTES.set(await store.disk.volume())
        await asyncio.sleep(seconds)


def _limiter(config: Config) -> RateLimiter | None:
    """The per-client rate limit's buckets (core.admit); a burst of one second's rate when none is set."""
    if config.rate_limit is None:
        return None
    return RateLimiter(config.rate_limit, config.burst or max(1.0, config.rate_limit))


async def reload(node: Node) -> bool:
    """SIGHUP: read the config file again; apply it if valid, keep the old one (and say why) if not.

    Connections stay open: only the routing table and the cluster membership are swapped. One reload at a time, in
    the order they were asked for: each read its file in a thread, and one that took longer (a slow mount, a file
    with many certificates) applied what it had read after a later one had applied the file as it now is.
    """
    if node.reloading.locked():
        log.info("reload waits for the reload in progress to end")
    async with node.reloading:
        return await _reload(node)


async def _reload(node: Node) -> bool:
    from edgecache.errors import ConfigError

    await node.store.revive(node.config.cache.all_disks)  # disks out of service whose directory works again
    path = node.config.source
    if path == "command line":
        log.warning("reload: this node was started without a config file; nothing to reload")
        return False
    # In a thread of its own, given up in time: a FIFO or a stalled mount held the reload lock (and an executor thread,
    # which the worker's exit then waited for) until the read returned (edgecache.readoff).
    future = readoff.start(partial(tls.reread, path, node.certificates is not None))
    if future is None:
        log.error("reload rejected, keeping the running config: %s: earlier reads of it have not returned", path)
        return False
    try:
        new, contexts = await asyncio.wait_for(asyncio.wrap_future(future), node.config.reload_timeout)
    except TimeoutError:
        log.error(
            "reload rejected, keeping the running config: %s: reading it did not end within %g s",
            path,
            node.config.reload_timeout,
        )
        return False
    except ConfigError as exc:
        for line in exc.problems:
            log.error("reload rejected, keeping the running config: %s", line)
        return False
    for name in restart_changes(new, node.config):
        log.warning("reload: %s changed in %s; it takes effect at the next restart", name, path)
    new = as_running(new, node.config)
    if node.certificates is not None and contexts is not None:
        node.certificates.use(contexts)
    node.shared.reload(new.sites)
    node.origin.sites = len(new.sites)
    node.shared.forwarders, node.shared.proxy_from = new.trusted_forwarders, new.proxy_protocol_from
    node.shared.max_in_flight = new.max_requests
    if (new.rate_limit, new.burst) != (node.config.rate_limit, node.config.burst):  # else its buckets are kept
        node.shared.limiter = _limiter(new)
    if node.cluster is not None and new.cluster is not None:
        node.cluster.settings = new.cluster
        if new.cluster.dns is None:
            node.cluster.set_members(new.cluster.nodes)
    # What only a restart changes stays as it runs: the next reload is compared with what the node does, so a file
    # put back as it runs is no change (the parent keeps them so for the workers it starts later, too).
    node.config = new
    log.info("reloaded %s: %d sites", path, len(new.sites))
    return True


def make_server(node: Node) -> web.Server:
    quiet_client_faults()
    # The low-level server: no router, so every target (absolute-form, odd paths) reaches our own checks.
    # Request bodies are forwarded as the client sent them: never decompressed (aiohttp's default inflated a gzip
    # body and sent it on still labelled gzip, cut to the client's Content-Length).
    return badhead.Server(
        node.handler,
        access_log=None,
        handler_cancellation=False,
        keepalive_timeout=node.config.idle_timeout,
        auto_decompress=False,
    )


def connection_cap(c: Config) -> tuple[int, int, int]:
    """server.max_connections, or fewer when the worker's file descriptors would run out first: past them
    accept() fails and a client gets no answer at all instead of the 503, and every file the worker opens
    meanwhile fails too (a slice, the disks' probe, which then took the disk out of service until a reload).
    Kept aside for the rest: the slice files open for disk hits, the origin pools, the pool to peers, the
    connections lingering after their answers (proxy.linger: their places under the cap are let go) and a margin
    (SQLite, logs, pipes), or half of what is left when the limit is too low for all that. With it, how many
    may linger: after an answer, and after the 503 (at most a quarter and a sixteenth of what the cap leaves)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return c.max_connections, linger.LIMIT, linger.FULL_LIMIT
    try:
        left = soft - len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: not Linux
        left = soft
    reserve = OPEN_FILES + 2 * c.origin.max_connections + c.origin.body_connections + 256
    reserve += linger.LIMIT + linger.FULL_LIMIT
    cap = max(left - reserve, left // 2, 1)
    if cap >= c.max_connections:
        return c.max_connections, linger.LIMIT, linger.FULL_LIMIT
    log.warning(
        "server.max_connections %d lowered to %d: the file descriptor limit is %d", c.max_connections, cap, soft
    )
    rest = max(left - cap, 0)
    return cap, min(linger.LIMIT, rest // 4), min(linger.FULL_LIMIT, rest // 16)


def make_fast(node: Node, server: web.Server) -> FastServer:
    """The protocol in front of aiohttp: fresh hits off the socket, everything else handed to `server`."""
    c = node.config
    cap, lingering, full = connection_cap(c)
    settings = FastSettings(
        header_timeout=c.header_timeout,
        idle_timeout=c.idle_timeout,
        write_timeout=c.client_write_timeout,
        sendfile=c.disk_send == "sendfile",
        max_connections=cap,
        answers=c.fast_path,  # off: a PROXY listener's connections go to aiohttp right after the header
        memo_bytes=c.cache.memo_bytes,
        lingering=lingering,
        full_lingering=full,
    )
    return FastServer(node.shared, server, settings)


async def start_listeners(
    node: Node, runner: web.BaseRunner, fast: FastServer, bound: list[Bound] | None = None
) -> list[web.BaseSite]:
    """Serve the client listeners `bound` (bound here when not given) on the fast path's protocol: it reads a
    PROXY header where one is expected, then answers what it can, or with the fast path turned off hands every
    connection to aiohttp."""
    c = node.config
    sites: list[web.BaseSite] = []
    for b in bound if bound is not None else bind_listeners(c):
        ctx = node.certificates.context if b.tls and node.certificates is not None else None
        # With the fast path off, its protocol only hands each connection to aiohttp behind the HeadGuard
        # (headguard: a head's time limit, and answers for a client that half-closed after its requests).
        site = FastSite(runner, fast, b.sock, backlog=BACKLOG, ssl_context=ctx, proxy=b.proxy)
        await site.start()
        sites.append(site)
        log.info("edgecache listening on %s://%s%s", "https" if ctx else "http", b.addr, " (PROXY)" if b.proxy else "")
    return sites


# How long the admin and demo listeners' calls may go on after the drain (/readyz says "draining" through it):
# aiohttp's 60 s outlived the parent's kill at drain + supervisor.KILL_AFTER, before the node's own end.
SIDE_STOP = 1.0


async def start_internal(clients: web.BaseRunner, directory: Path) -> Path:
    """A Unix socket on the client runner (the full handler, never the fast path) for this node's own prefetch
    requests, which a site's client ACL does not apply to (proxy.handler.internal). Put it in a directory only
    this user can enter: no byte a client sends makes its TCP connection arrive on it."""
    path = directory / "internal.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # the socket of a worker killed before it could close it (the directory outlives it)
    await web.UnixSite(clients, str(path)).start()
    return path


async def _start_admin(node: Node, clients: web.BaseRunner, directory: Path | None = None) -> web.AppRunner | None:
    if node.config.admin is None:
        return None
    from edgecache.admin.app import admin_app
    from edgecache.admin.jobs import JobRunner
    from edgecache.admin.prefetch import prefetch_routes
    from edgecache.admin.purge import admin_tokens, purge_handler, purge_routes

    # The internal socket's: the parent's (supervisor._Workers), which outlives a killed worker; else our own.
    private = await asyncio.to_thread(RunDir, Kind.PRIVATE) if directory is None else None  # file I/O: off the loop
    internal = await start_internal(clients, private.path if private is not None else cast(Path, directory))
    c = node.config
    jobs = JobRunner(
        cast(DiskTier, node.store.disk),  # Disks has the get, put and delete of a DiskTier the runner uses
        "http://edge",
        c.job_retention,
        c.max_jobs,
        unix=str(internal),
        slots=c.prefetch_slots,
    )
    await jobs.start()
    purge = purge_handler(lambda: node.config, node.store, node.cluster)
    routes = prefetch_routes(lambda: node.config, jobs) + purge_routes(lambda: node.config, node.store, node.cluster)
    cluster = node.cluster
    members = (lambda: {m.id for m in cluster.ring.members}) if cluster is not None else None

    def sites() -> set[str]:
        return {s.name for s in node.config.sites}

    app = admin_app(node.ready, lambda: admin_tokens(node.config), node.shared.ring_view, purge, routes, members, sites)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SIDE_STOP)
    runner.app.on_cleanup.append(lambda _app: jobs.close())
    if private is not None:
        runner.app.on_cleanup.append(lambda _app: asyncio.to_thread(private.remove))
    await runner.setup()
    serverfield.follow(runner)
    await TCPListener(runner, node.config.admin.host, node.config.admin.port, node.config.header_timeout).start()
    log.info("admin listening on http://%s", node.config.admin)
    if node.purge_sync is not None:  # its peers hear it ask, and pass it purges though they see it down (heard_from)
        node.purge_sync.wake()
    return runner


async def run(
    config: Config,
    worker: int = 0,
    bound: list[Bound] | None = None,
    beats: Heartbeats | None = None,
    epoch: Epoch | None = None,
    private: Path | None = None,
    demo_socks: list[socket.socket] | None = None,
) -> None:
    heap_slices(config.cache.slice_bytes)  # before any slice is filled
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if beats is not None and config.watchdog > 0:
        # Stopped by asyncio.run's cancelling of what is left, so a drain that hangs is caught too.
        asyncio.ensure_future(keep_alive(beats, worker, config.watchdog))  # noqa: RUF006
    install_test_hooks(loop)
    demo = await start_demo(config, demo_socks, SIDE_STOP) if worker == 0 and config.demo_origin is not None else None
    async with open_node(config, worker, epoch) as node:
        loop.add_signal_handler(signal.SIGUSR1, node.access.reopen)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload(node)))
        # Held back since the parent started this process (lifecycle.HELD): one that came meanwhile is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
        server = make_server(node)
        # aiohttp reads a shutdown timeout of 0 as "no limit": a drain of 0 is the shortest wait it takes instead.
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=max(config.drain, 0.001))
        await runner.setup()
        fast = make_fast(node, server)
        await start_listeners(node, runner, fast, bound)
        # After the listeners: jobs resume through them.
        admin = await _start_admin(node, runner, private) if worker == 0 else None
        # What was built so far lives as long as the process: long full collections walking it again showed in p99.
        gc.collect()
        gc.freeze()
        node.state["listening"] = True
        trimmer = asyncio.ensure_future(bound_rss(node.engine.store, config.cache.memory_headroom))
        sampler = asyncio.ensure_future(fast.sample_every(config.cache.stats_interval))  # the drain's too
        await stop.wait()
        trimmer.cancel()
        node.state["draining"] = True
        log.info("stopping: draining connections for up to %g s", config.drain)
        await asyncio.gather(runner.cleanup(), fast.shutdown(config.drain))
        sampler.cancel()
        if admin is not None:
            await admin.cleanup()
    if demo is not None:
        await demo.cleanup()


def _more_file_descriptors() -> None:
    """Client connections and the open slice files need more than the usual soft limit of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def worker_main(
    config: Config,
    worker: int,
    bound: list[Bound],
    beats: Heartbeats,
    restarts: Restarts,
    fork_servers: Restarts,
    epoch: Epoch | None,
    private: Path | None = None,
    demo: list[socket.socket] | None = None,
) -> None:
    """A worker process: the node on `bound`, its heartbeat in `beats`, showing the parent's restart counts (its
    fork servers' as they change), sharing `epoch` with the other workers, the parent's `private` directory for its
    internal socket, and (worker 0) the demo origin's listeners."""
    import uvloop

    from edgecache import metrics
    from edgecache.metricturn import apply

    begin_worker(worker)
    hold(private, os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # the parent's runtime directories, while this runs
    fewer_malloc_arenas()
    _more_file_descriptors()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{worker} %(levelname)s %(name)s: %(message)s")
    quiet_sni_faults()
    metrics.mark_build()
    metrics.WORKER_RESTARTS.source = restarts.counts
    metrics.FORK_SERVER_RESTARTS.source = fork_servers.counts
    try:
        uvloop.run(run(config, worker, bound, beats, epoch, private, demo))
    finally:
        apply()  # the increments of the loop's last turn (edgecache.metricturn)
