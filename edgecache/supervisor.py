"""The parent process (`edgecache serve`): binds the listeners, keeps `workers` worker processes running on
them, replaces one that dies or gets stuck, and forwards the signals that stop or reload the node. It imports
none of the serving code (aiohttp, the tiers), so it stays small.

A worker that exits for any reason while the node is not stopping is started again: at once the first time
(its listeners stay open meanwhile, so new connections wait for it in the backlog), then after growing delays
(BACKOFF) while its successors keep dying young, so a crash loop cannot spin; during such a delay its listeners
are closed, and new connections go to the other workers (or are refused, if it is the only one). A worker
whose loop stopped turning ends itself (edgecache.watchdog); one whose heartbeat is twice `watchdog` old (the
process stopped whole, or blocked writing its dump) is killed here. Either way the restart counts as "stuck".

The parent is a plain blocking loop over the workers' sentinels, the fork server's and a signal wake-up pipe: it does
no I/O of its own that could stall it (a worker's start waits on the fork server within a deadline: edgecache.forks),
and its handlers only note the signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from edgecache.accesslog import check_writable
from edgecache.config import Config, load
from edgecache.configwatch import ConfigWatch
from edgecache.core.rundirs import Kind
from edgecache.errors import ConfigError
from edgecache.forks import Forks, Worker, become_subreaper, exit_status
from edgecache.lifecycle import Reason, Restarts, as_running
from edgecache.listeners import Bound, bind_demo, bind_listeners, check_free, close
from edgecache.readoff import READ_SECONDS
from edgecache.readoff import start as read_off
from edgecache.rundirs import RunDir, sweep
from edgecache.storage.epoch import Epoch
from edgecache.storage.orphans import SETTLE_SECONDS, Sweeper
from edgecache.tls import Contexts
from edgecache.watchdog import Heartbeats

log = logging.getLogger(__name__)

# Seconds before restarting a worker whose predecessors kept dying young (ran less than STABLE_SECONDS).
BACKOFF = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
STABLE_SECONDS = 30.0
START_SECONDS = 60.0  # a new worker's loop must turn within this (interpreter start, imports) or twice watchdog
KILL_AFTER = 5.0  # past the drain, workers still running at a stop are killed
TICK = 0.5  # how often heartbeats are looked at
_STOP = (signal.SIGTERM, signal.SIGINT)
_FORWARD = (*_STOP, signal.SIGHUP, signal.SIGUSR1)


@dataclass(slots=True)
class Hooks:
    """What the supervisor asks of the server."""

    start: Callable[[int], Worker]  # start slot's worker
    read: Callable[[], Config]  # SIGHUP: read the config again (in a thread of its own: it may block) ...
    reload: Callable[[Config], None]  # ... and use what it read for the workers started from now on
    gone: Callable[[int], None]  # a worker process (this pid) has exited and been reaped
    pause: Callable[[int], None]  # slot's next worker will not start at once: close its listeners meanwhile
    stopping: Callable[[], None]  # a stop began: nothing will be restarted


@dataclass(slots=True)
class Slot:
    index: int
    process: Worker | None = None
    pid: int = 0
    started: float = 0.0
    young: int = 0  # successive workers of this slot that died young
    restart_at: float | None = None
    killed: bool = False
    hung: bool = False  # killed here for want of a heartbeat


@dataclass(slots=True)
class Supervisor:
    hooks: Hooks
    workers: int
    watchdog: float  # seconds; 0: heartbeats are not checked
    beats: Heartbeats
    drain: float  # seconds a worker may take to stop (server.drain, with exclusive tiers + cache.save_on_stop)
    restarts: Restarts  # the workers replaced, by Reason: every worker shows them
    watch: tuple[str, float] | None = None  # the config file and seconds between looks at it (server.watch_config)
    stop_at: float | None = None  # when the stop began
    slots: list[Slot] = field(default_factory=list)
    source: str = "the config file"  # named when its read does not end in time
    reading: tuple[Future[Config], float] | None = None  # a reload's read under way, and when it is given up
    read_seconds: float = READ_SECONDS  # how long a reload's read may take: server.reload_timeout of the config used
    again: bool = False  # a reload asked while one was read: the file may have changed since that read began
    wake: int = -1  # the write end of the wake-up pipe: a read that ended wakes the loop through it
    forks: Forks | None = None  # the fork server: replaced here, if it ends, for the next worker start

    def run(self) -> None:
        """Until a stop signal, and then until every worker has exited."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, _note) for sig in _FORWARD}
        # A change of the config file comes through the pipe as a SIGHUP does, and is met the same way.
        watch = ConfigWatch(*self.watch, lambda: _write(wake_w, signal.SIGHUP)) if self.watch else None
        self.wake = wake_w
        try:
            if watch is not None:
                watch.start()
            self.slots = [Slot(i) for i in range(self.workers)]
            for slot in self.slots:
                self._start(slot)
            while self.stop_at is None or self._running():
                forks = self.forks.sentinels if self.forks is not None and self.stop_at is None else []
                wait([*(p.sentinel for _, p in self._running()), wake_r, *forks], self._timeout())
                self._signals(wake_r)
                if forks and self.forks is not None:
                    self.forks.check()
                self._reloaded()
                self._reap()
                self._check_heartbeats()
                self._kill_late()
                self._restart_due()
        finally:
            if watch is not None:
                watch.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            self.wake = -1  # a read that ends later writes nowhere, not into what reuses the descriptor
            os.close(wake_r)
            os.close(wake_w)
            self._kill_all()  # only if the loop above failed: never leave a worker behind

    def _running(self) -> list[tuple[Slot, Worker]]:
        return [(s, s.process) for s in self.slots if s.process is not None]

    def _timeout(self) -> float | None:
        now = time.monotonic()
        times = [s.restart_at - now for s in self.slots if s.restart_at is not None]
        if self.stop_at is not None and any(not s.killed for s, _ in self._running()):
            times.append(self.stop_at + self.drain + KILL_AFTER - now)  # once past and killed: no more spinning
        if self.reading is not None:
            times.append(self.reading[1] - now)
        if self.watchdog > 0:
            times.append(TICK)
        return max(0.0, min(times)) if times else None

    def _signals(self, wake_r: int) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in os.read(wake_r, 1024):
                if signum in _STOP and self.stop_at is None:
                    log.info("%s: stopping the workers", signal.Signals(signum).name)
                    self.stop_at = time.monotonic()
                    for slot in self.slots:
                        slot.restart_at = None
                    self.hooks.stopping()
                elif signum == signal.SIGHUP:
                    self._reload()
                if signum in _FORWARD:
                    self._send(signum)

    def _reload(self) -> None:
        """Start reading the config file again, in a thread: a file on a stalled mount or a FIFO stalled this
        loop, which then neither reaped nor replaced a worker until the read returned."""
        if self.reading is not None:
            self.again = True
            return
        future = read_off(self.hooks.read, self._woken)
        if future is None:
            log.error(
                "reload rejected, keeping the running config: %s: earlier reads of it have not returned", self.source
            )
            return
        self.reading = future, time.monotonic() + self.read_seconds

    def _woken(self) -> None:
        """In the reading thread, once its read ended: wake the loop (a 0 in the pipe is no signal)."""
        with contextlib.suppress(OSError):  # a full pipe wakes the loop as well; a closed one: the loop is over
            if self.wake >= 0:
                _write(self.wake, 0)

    def _reloaded(self) -> None:
        """Use the read that ended, or give up the one that did not end in time."""
        if self.reading is None:
            return
        future, deadline = self.reading
        if future.done():
            self.reading = None
            if (exc := future.exception()) is not None:
                log.error("reload rejected, keeping the running config: %s: %r", self.source, exc)
            else:
                self.hooks.reload(future.result())
                self.read_seconds = future.result().reload_timeout
        elif time.monotonic() >= deadline:
            self.reading = None
            log.error(
                "reload rejected, keeping the running config: %s: reading it did not end within %g s",
                self.source,
                self.read_seconds,
            )
        else:
            return
        if self.again:  # asked while that read was under way: read the file as it is now
            self.again = False
            self._reload()

    def _send(self, signum: int) -> None:
        for slot, _ in self._running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signum)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot, process in self._running():
            if process.is_alive():
                continue
            last = self.beats.last(slot.index)
            silent = now - (last or slot.started)
            stuck = slot.hung or (self.watchdog > 0 and last is not None and silent >= self.watchdog)
            reason = Reason.STUCK if stuck else Reason.DIED
            how = f"its loop had not turned for {silent:.1f} s" if stuck else exit_status(process.exitcode)
            pid, slot.process = slot.pid, None
            process.close()  # its sentinel's descriptor, now rather than at some later collection
            self.hooks.gone(pid)
            if self.stop_at is not None:
                log.info("worker %d (pid %d) stopped: %s", slot.index, pid, how)
                continue
            self.restarts.add(reason)
            delay = self._schedule(slot, now)
            log.error("worker %d (pid %d) %s: %s; restarting in %g s", slot.index, pid, reason, how, delay)

    def _check_heartbeats(self) -> None:
        if self.watchdog <= 0:
            return
        now = time.monotonic()
        for slot, _ in self._running():
            last = self.beats.last(slot.index)
            silent = now - (last or slot.started)
            limit = 2 * self.watchdog if last is not None else max(START_SECONDS, 2 * self.watchdog)
            if silent > limit and not slot.killed:
                log.error("worker %d: no heartbeat for %.1f s; killing it", slot.index, silent)
                slot.hung = True
                self._kill(slot)

    def _kill_late(self) -> None:
        now = time.monotonic()
        if self.stop_at is None or now < self.stop_at + self.drain + KILL_AFTER:
            return
        for slot, _ in self._running():
            if not slot.killed:
                log.error("worker %d still running %.0f s after the stop; killing it", slot.index, now - self.stop_at)
                self._kill(slot)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at and self.stop_at is None:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        self.beats.clear(slot.index)
        slot.restart_at, slot.killed, slot.hung, slot.started = None, False, False, time.monotonic()
        try:
            slot.process = self.hooks.start(slot.index)
            slot.pid = slot.process.pid or 0
        except OSError as exc:  # out of processes or memory: try again later, as for a worker that died young
            delay = self._schedule(slot, slot.started)
            log.error("worker %d could not be started: %s; trying again in %g s", slot.index, exc, delay)
            return
        log.info("worker %d started: pid %d", slot.index, slot.pid)

    def _schedule(self, slot: Slot, now: float) -> float:
        """When the slot's next worker starts: at once, unless its predecessors keep dying young."""
        if now - slot.started >= STABLE_SECONDS:
            slot.young = 0
        delay = BACKOFF[min(slot.young, len(BACKOFF) - 1)]
        slot.young += 1
        slot.restart_at = now + delay
        if delay > 0:
            self.hooks.pause(slot.index)
        return delay

    def _kill(self, slot: Slot) -> None:
        slot.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for slot, process in self._running():
            self._kill(slot)
            process.join()
            slot.process = None


def _note(_signum: int, _frame: object) -> None:
    """The wake-up pipe carries the signal's number to the loop; nothing else to do here."""


def _write(fd: int, signum: int) -> None:
    os.write(fd, bytes([signum]))


def serve(config: Config) -> int:
    """Until SIGTERM or SIGINT, and every worker has stopped; 1 if the listeners cannot be bound."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s main %(levelname)s %(name)s: %(message)s")
    try:
        check_free(config)
        _check_access_log(config)
        workers = _Workers(config)
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        return 1
    try:
        watched = config.watch_config > 0 and config.source != "command line"
        watch = (config.source, config.watch_config) if watched else None
        stopping = config.drain + config.cache.stop_save_seconds  # a worker saves its memory after its drain
        hooks, beats, restarts = workers.hooks(), workers.beats, workers.restarts
        supervisor = Supervisor(hooks, config.workers, config.watchdog, beats, stopping, restarts, watch)
        supervisor.source, supervisor.read_seconds = config.source, config.reload_timeout
        supervisor.forks = workers.forks
        supervisor.run()
    finally:
        workers.close()
    return 0


def _check_access_log(config: Config) -> None:
    """A log path the workers cannot open stops the node at start, naming the key: a worker met it only as an
    exception in its start, died, and was started again and again while the node never served."""
    if config.access_log is None:
        return
    try:
        check_writable(config.access_log)
    except OSError as exc:
        what = f"{config.source}: log.access: cannot open {config.access_log}: {exc.strerror}"
        raise OSError(exc.errno, what) from exc


class _Workers:
    """What the supervisor starts workers with: each one's listeners (closed while its restart waits), the config
    (read again on SIGHUP), the heartbeats, and what several workers share: the metrics directory and the epoch."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bound: list[list[Bound] | None] = [bind_listeners(config) for _ in range(config.workers)]
        self.demo: list[socket.socket] | None = bind_demo(config)  # worker 0's, kept as its client listeners are
        self.beats = Heartbeats(config.workers)
        self.restarts = Restarts(Reason)  # workers replaced (died or stuck): every worker shows them
        self.epoch = Epoch(config.workers) if config.workers > 1 else None  # what a worker changed, told the others
        sweep(Path(tempfile.gettempdir()), os.getuid())  # the runtime directories nodes killed before left
        # The directory of worker 0's internal socket (server.start_internal), made here so that it outlives a worker
        # killed with SIGKILL: each worker 0 binds the socket in it again, and close() removes it.
        self.dirs = [RunDir(Kind.PRIVATE)]
        self.private = self.dirs[0].path
        self.metrics_dir: Path | None = None
        # A worker killed mid-write beside others leaves value files no row names, which its successor (not alone
        # with the disks) never deletes; with one worker, its successor has them alone and does.
        self.orphans = Sweeper(self._disks, _settle()) if config.workers > 1 else None
        if config.workers > 1:
            # Every worker's metrics are added up through files in one directory (prometheus-client multiprocess).
            self.dirs.append(RunDir(Kind.METRICS))
            self.metrics_dir = self.dirs[-1].path
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        if not become_subreaper():  # then a worker the fork server leaves is reaped by init, its status unknown here
            log.warning("not a child subreaper (Linux only): a worker's status is lost if its fork server ends")
        self.forks = Forks(self.private)  # after the environment is set: the fork server's is every worker's

    def hooks(self) -> Hooks:
        return Hooks(self.start, self.read, self.reload, self.gone, self.pause, self.stopping)

    def start(self, worker: int) -> Worker:
        listeners = self.bound[worker] = self.bound[worker] or bind_listeners(self.config)
        demo = None
        if worker == 0:
            demo = self.demo = self.demo if self.demo is not None else bind_demo(self.config)
        restarts, forks = self.restarts, self.forks
        args = (self.config, worker, listeners, self.beats, restarts, forks.restarts, self.epoch, self.private, demo)
        return forks.start(_worker, args, f"edgecache-w{worker}")

    def read(self) -> Config:
        return reloaded(self.config)

    def reload(self, config: Config) -> None:
        if config is not self.config:
            log.info("read %s again: the workers started from now on serve it", config.source)
        self.config = config

    def _disks(self) -> list[Path]:
        return [disk.path for disk in self.config.cache.all_disks]

    def gone(self, pid: int) -> None:
        if self.orphans is not None:
            self.orphans.died()
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            try:
                fold_dead(self.metrics_dir, pid)
            except (OSError, ValueError, struct.error) as exc:  # a file it left half written: kept as it is
                log.warning("the metrics of worker pid %d were not folded: %s", pid, exc)

    def pause(self, worker: int) -> None:
        close(self.bound[worker] or [])
        self.bound[worker] = None
        if worker == 0:  # the demo's fills are refused meanwhile, as its share of the viewers are
            for sock in self.demo or []:
                sock.close()
            self.demo = None

    def stopping(self) -> None:
        """New connections are refused from now on, rather than left in a backlog nobody will accept from."""
        for worker in range(len(self.bound)):
            self.pause(worker)

    def close(self) -> None:
        self.stopping()
        if self.orphans is not None:
            self.orphans.stop()
        for directory in self.dirs:
            directory.remove()
        # multiprocessing started two helper processes: wait for them here rather than leave them to whoever
        # adopts them.
        from multiprocessing import resource_tracker

        self.forks.close()
        with contextlib.suppress(AttributeError, OSError):
            resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


def _settle() -> float:
    """Seconds from a worker's death to the sweep of the files it left (storage.orphans.Sweeper). Test-only: with
    EDGECACHE_TEST_HOOKS=1, EDGECACHE_TEST_ORPHAN_SETTLE gives another (never set them in production)."""
    if os.environ.get("EDGECACHE_TEST_HOOKS") == "1":
        with contextlib.suppress(KeyError, ValueError):
            return float(os.environ["EDGECACHE_TEST_ORPHAN_SETTLE"])
    return SETTLE_SECONDS


def fold_dead(directory: Path, pid: int) -> None:
    """Add a dead worker's counters and histograms into one file of each kind and remove its files, "max" gauges
    included (every live worker sets those again). Left in place, each death added three files that every /metrics
    read on worker 0's loop: 1.2 s a scrape after a thousand restarts of a crash loop."""
    from prometheus_client.mmap_dict import MmapedDict

    for kind in ("counter", "histogram"):
        dead, archive = directory / f"{kind}_{pid}.db", directory / f"{kind}_archive.db"
        if not dead.exists():
            continue
        totals: dict[str, float] = {}
        for path in (p for p in (archive, dead) if p.exists()):
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
                totals[key] = totals.get(key, 0.0) + value
        staged = directory / f"{kind}_archive.staged"  # not *.db: no scrape reads it while it is written
        staged.unlink(missing_ok=True)
        written = MmapedDict(str(staged))  # type: ignore[no-untyped-call]
        for key, value in totals.items():
            written.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        written.close()  # type: ignore[no-untyped-call]
        os.replace(staged, archive)  # then the dead file goes: a scrape in the microseconds between counts it twice
        dead.unlink()
    (directory / f"gauge_max_{pid}.db").unlink(missing_ok=True)


def _worker(*args: Any) -> None:
    """A worker process's entry, named here so that this process never imports the serving code."""
    from edgecache.server import worker_main

    worker_main(*args)


def reloaded(running: Config) -> Config:
    """The config for workers started after a SIGHUP: the file read again, with what only a restart changes kept
    as it runs, so a replaced worker serves what the others serve. A file the workers refuse changes nothing
    (they log why): one that does not load, or whose certificates do not."""
    if running.source == "command line":
        return running
    try:
        new = load(running.source)
        if new.tls_listen:
            Contexts.of(new)
    except (ConfigError, OSError, ssl.SSLError, ValueError):
        return running
    return as_running(new, running)
