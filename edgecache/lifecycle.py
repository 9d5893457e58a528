"""What the parent (supervisor.py) and its workers (server.py) agree on about a worker's life: which config fields
only a restart changes, why a worker was replaced, and how many fork servers were. How long a stopping worker drains
is `Config.drain` (server.drain), read by both from the same config."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
from dataclasses import replace
from enum import StrEnum
from multiprocessing import forkserver

from edgecache.config import Config

# What only a restart changes: a reload reports each that changed, and the parent keeps them as they run for the
# workers it starts later, so every worker serves alike. `drain` is one: a worker's aiohttp runner takes its
# shutdown timeout when it is built, and the parent's kill deadline (drain + KILL_AFTER) must never come before the
# drain of a worker it started. The fast path's settings are read once, when its server is built (server.make_fast),
# the Server field when the node opens (heads the fast path remembers hold it), and the prefetch job runner's
# settings when it starts. Everything else a reload applies (server.reload).
RESTART_ONLY = (
    "listen",
    "tls_listen",
    "proxy_protocol",
    "cache",
    "origin",
    "workers",
    "watchdog",
    "drain",
    "watch_config",
    "client_write_timeout",
    "max_connections",
    "fast_path",
    "header_timeout",
    "idle_timeout",
    "disk_send",
    "server_field",
    "admin",
    "access_log",
    "demo_origin",
    "job_retention",
    "max_jobs",
    "prefetch_slots",
)


def cluster_kind(config: Config) -> str:
    """What a worker starts its cluster parts by: none, the members a file lists, or members found in DNS."""
    if config.cluster is None:
        return "none"
    return "a cluster" if config.cluster.dns is None else "a DNS cluster"


def restart_changes(new: Config, running: Config) -> list[str]:
    """What `new` changes that only a restart applies (as_running keeps it as it runs), to be logged."""
    changed = [name for name in RESTART_ONLY if getattr(new, name) != getattr(running, name)]
    if cluster_kind(new) != cluster_kind(running):
        changed.append(f"cluster (from {cluster_kind(running)} to {cluster_kind(new)})")
    return changed


def as_running(new: Config, running: Config) -> Config:
    """`new`, with what only a restart changes kept as it runs: RESTART_ONLY, and the whole cluster section when
    `new` turns the cluster on or off, or moves its members between the file and DNS. A worker builds its cluster
    view, health checks, DNS lookups and purge log sync when it starts; a reload that took the section away left
    them forwarding to the peers while purges were applied on this node alone (its viewers were relayed the
    peers' purged copies), and one that added it numbered purges with no view to pass them by."""
    kept = {name: getattr(running, name) for name in RESTART_ONLY}
    if cluster_kind(new) != cluster_kind(running):
        kept["cluster"] = running.cluster
    return replace(new, **kept)


# The signals a worker handles on its loop (reload, reopen the access log): the fork server begins with them blocked
# (held_for_forks), so every worker forked from it begins with them blocked and pending (a signal mask outlives fork
# and exec) and unblocks them once its loop handles them. Before, one sent while the worker was importing killed it
# (the default action), and one sent after that was ignored, and the worker kept the config it was started with.
HELD = frozenset({signal.SIGHUP, signal.SIGUSR1})
# The fork server's mask (forks.held_for_forks), which every worker forked from it begins with: HELD, and SIGTERM,
# which a stop may send to every process of the node (systemd's KillMode=control-group): the fork server would die
# of it mid-stop, an end the parent logs as a fault. A worker unblocks SIGTERM as it begins: one sent to it meanwhile
# stops it, as before.
FORK_HELD = HELD | {signal.SIGTERM}


class Reason(StrEnum):
    """Why a worker was replaced (the label of edgecache_worker_restarts_total)."""

    DIED = "died"
    STUCK = "stuck"


class ForkServerEnd(StrEnum):
    """Why a fork server was replaced (the label of edgecache_fork_server_restarts_total)."""

    ENDED = "ended"  # exited, crashed or killed
    STALLED = "stalled"  # forked no worker within its deadline (edgecache.forks): killed here


class Restarts:
    """Processes replaced since the node started, by why (a StrEnum's values), in shared memory: the parent adds, and
    every worker reads them at each scrape (metrics.ParentCounter). Read then, not handed to a worker as it starts:
    a fork server's replacement starts no worker, and a worker's death would show only once its successor started
    (after a backoff, for one that keeps dying young).

    The parent's loop is the only writer, of whole 8-byte words: a reader sees a count before or after an addition."""

    __slots__ = ("_counts", "_reasons")

    def __init__(self, reasons: type[StrEnum]) -> None:
        self._reasons: list[StrEnum] = list(reasons)
        self._counts = multiprocessing.get_context("spawn").RawArray("Q", len(self._reasons))

    def add(self, why: StrEnum) -> int:
        """Count one; how many were replaced in all."""
        self._counts[self._reasons.index(why)] += 1
        return sum(self._counts)

    def counts(self) -> dict[str, int]:
        return {why.value: int(count) for why, count in zip(self._reasons, self._counts, strict=True)}


WORKER_NAME = "edgecache-w"  # and the slot: a worker's comm (/proc/PID/comm, ps -o comm, top)
_PR_SET_NAME = 15


def begin_worker(worker: int) -> None:
    """What a worker process does first: take its name, and end with the parent from now on."""
    _name(f"{WORKER_NAME}{worker}")
    die_with_parent()


def _name(name: str) -> None:
    """This process's comm. A worker's command line is the fork server's, which forked it, and its parent is the fork
    server or (once that one died) the node's parent process: the name alone tells a worker from the fork server, to
    an operator's ps and top and to the tools that sample the workers (loadtest.soak)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode(), 0, 0, 0)


def die_with_parent() -> None:
    """End this worker when the parent ends, even by SIGKILL: no orphan goes on holding the listeners, the port and
    the disk tier. The parent is the process this worker was started through (multiprocessing's parent sentinel:
    a pipe whose other end only the parent holds, for this worker's life); if it ended before now, so does this
    worker. A thread waits for that pipe's end, in a read that needs neither the loop nor the GIL, then kills this
    process (holding the GIL for that moment: a loop stuck in Python code lets it go within 5 ms). Not the kernel's
    PR_SET_PDEATHSIG: this worker's parent is the fork server, and a fork server that dies must cost no worker
    (edgecache.forks)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # FORK_HELD
    # The fork server gives every process it forks a copy of the parent's end of its "alive" pipe (so that it could
    # fork through it too): held here, the fork server never saw the parent end.
    server = forkserver._forkserver
    with contextlib.suppress(AttributeError, TypeError, OSError):
        os.close(server._forkserver_alive_fd)  # type: ignore[attr-defined]
        server._forkserver_alive_fd = None  # type: ignore[attr-defined]
    parent = multiprocessing.parent_process()
    if parent is None or not parent.is_alive():
        os._exit(1)
    threading.Thread(target=_end_with, args=(parent.sentinel,), name="edgecache-parent", daemon=True).start()


def _end_with(pipe: int) -> None:
    """Until the parent's end of `pipe` is closed (the parent ended); then this process ends at once."""
    with contextlib.suppress(OSError):
        while os.read(pipe, 4096):
            pass
    os.kill(os.getpid(), signal.SIGKILL)
