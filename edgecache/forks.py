"""The parent's side of multiprocessing's fork server, which forks every worker (edgecache.forkbase): it is started
here, asked for each worker with a deadline, replaced when it ends or stalls, and no worker depends on it.

A worker is the fork server's child, yet a fork server that dies must cost no worker (a node never stops serving):
- the parent is a child subreaper (PR_SET_CHILD_SUBREAPER), so the kernel gives it the fork server's orphans, and
  it reaps them with their exit status;
- the parent follows each worker by a pidfd, ready when the worker ends whoever its parent is by then: the fork
  server's own report (multiprocessing's sentinel) reads as an end, of every worker at once, when it dies;
- a worker ends with the parent by watching the parent's pipe (lifecycle.die_with_parent), not by the kernel's
  PR_SET_PDEATHSIG, which would kill it with the fork server.
A fork server that has not forked a worker within FORK_SECONDS (stopped, say) is killed and another started: the
parent waited on it for ever, replacing no worker and handling no signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from edgecache.lifecycle import FORK_HELD, ForkServerEnd, Restarts

log = logging.getLogger(__name__)

FORK_SECONDS = 5.0  # a fork server that has forked a worker forks the next in milliseconds: past this, it is stuck
READY_SECONDS = 60.0  # a new one imports the serving code before its first fork (supervisor.START_SECONDS)
ANSWER_SECONDS = 1.0  # the fork server reports a child's end, or ends when told, within this: unless stopped
_PR_SET_CHILD_SUBREAPER = 36
_server: Any = forkserver._forkserver  # multiprocessing's, whose fields are reset here
_unreaped: set[int] = set()  # workers that ended while their fork server could not report it (stopped)


def become_subreaper() -> bool:
    """Have the kernel give this process the orphans of its descendants (Linux 3.4): the fork server's workers."""
    with contextlib.suppress(OSError, AttributeError):
        return int(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    return False


@contextlib.contextmanager
def held_for_forks() -> Iterator[None]:
    """FORK_HELD blocked in this thread while it starts the fork server, so that it and every worker it forks begin
    so (a signal mask outlives fork and exec)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class ForkFailed(OSError):
    """The fork server did not fork the worker: it ended first, or stalled and was replaced twice."""


class Worker:
    """A worker process as the parent follows it: by its pid, whoever its parent is."""

    __slots__ = ("_pidfd", "ended", "exitcode", "pid", "process")

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.pid = process.pid or 0
        self.ended = False
        self.exitcode: int | None = None  # None once ended: its status was not to be had
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # already reaped (the fork server's report says how), or no pidfd here
            self._pidfd = None

    @property
    def sentinel(self) -> int:
        """Ready once the worker has ended."""
        return self.process.sentinel if self._pidfd is None else self._pidfd

    def is_alive(self) -> bool:
        if not self.ended:
            if self._pidfd is None:
                self.ended = not self.process.is_alive()
                self.exitcode = self.process.exitcode
            elif wait([self._pidfd], 0):
                self.ended, self.exitcode = True, self._status()
        return not self.ended

    def join(self) -> None:
        wait([self.sentinel])
        self.is_alive()

    def close(self) -> None:
        """The descriptors that followed it; only once it has ended."""
        popen = getattr(self.process, "_popen", None)
        if popen is not None and popen.returncode is None:  # its fork server never reported: nothing will now
            popen.returncode = 255 if self.exitcode is None else self.exitcode
        self.process.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _status(self) -> int | None:
        """Its exit status: its own to reap once the fork server has died, else the fork server's report."""
        if (code := _reap(self.pid)) is not None:
            return code
        popen = getattr(self.process, "_popen", None)
        if popen is None:
            return None
        if popen.returncode is None and wait([popen.sentinel], ANSWER_SECONDS):
            with contextlib.suppress(OSError, EOFError):  # EOF: the fork server died, and gave the worker here
                popen.returncode = forkserver.read_signed(popen.sentinel)
        if popen.returncode is not None:
            return int(popen.returncode)
        if (code := _reap(self.pid)) is None:
            _unreaped.add(self.pid)  # a zombie of the stopped fork server: reaped here once that one is gone
        return code


def _reap(pid: int) -> int | None:
    with contextlib.suppress(ChildProcessError):
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return os.waitstatus_to_exitcode(status)
    return None


class Forks:
    """multiprocessing's fork server, started now with a worker's imports done (spawned, each worker began a new
    interpreter and imported it all: 0.52-0.78 s of CPU until it listened; forked, 0.03-0.05 s, loadtest.restart).
    The fork server is itself spawned (fork and exec): this process's threads are not in it."""

    def __init__(self, tempdir: Path) -> None:
        # multiprocessing's own files (the fork server's socket) in the node's runtime directory `tempdir`, which the
        # next node sweeps if this one is killed, not in a pymp-* directory of their own that SIGKILL leaves for ever
        multiprocessing.current_process()._config["tempdir"] = str(tempdir)  # type: ignore[attr-defined]
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["edgecache.forkbase"])
        resource_tracker.ensure_running()  # before: starting it unblocks SIGTERM in the thread that starts it
        self.restarts = Restarts(ForkServerEnd)  # fork servers replaced (ended or stalled): every worker shows them
        self._pid = 0
        self._pidfd: int | None = None
        self._forked = 0  # the pid of the fork server that forked a worker: it forks the next at once
        self._ensure()

    @property
    def sentinels(self) -> list[int]:
        """Ready once the fork server has ended (the parent's loop waits on it too)."""
        return [] if self._pidfd is None else [self._pidfd]

    def check(self) -> None:
        """If the fork server ended, another now, ready for the next worker start; at that start if the one that
        ended never forked a worker (one that cannot start would be started again and again)."""
        if self._ended(now=True):
            self._ensure()

    def _ended(self, now: bool = False) -> bool:
        """Whether the fork server ended (then logged and forgotten) and another is to be started now."""
        if self._pidfd is None or not wait([self._pidfd], 0):
            return False
        pid, proven = self._pid, self._pid == self._forked
        code = self._forget()
        self.restarts.add(ForkServerEnd.ENDED)
        log.error(
            "the fork server (pid %d) ended: %s; the workers serve on, and another is started %s",
            pid,
            exit_status(code),
            "now" if now and proven else "at the next worker start",
        )
        return now and proven

    def start(self, target: Callable[..., object], args: tuple[object, ...], name: str) -> Worker:
        """A worker forked by the fork server, or ForkFailed (the parent tries again later)."""
        for _ in range(2):
            self._ensure()
            server = self._pid
            deadline = FORK_SECONDS if server == self._forked else READY_SECONDS
            process = self.context.Process(target=target, args=args, name=name)
            failed: list[BaseException] = []
            launch = threading.Thread(target=_launch, args=(process, failed), name=f"{name}-start", daemon=True)
            launch.start()
            launch.join(deadline)
            if launch.is_alive():  # its read of the new pid waits on the stalled fork server: its kill ends it
                self._replace(server, f"did not fork {_worker_name(name)} within {deadline:g} s")
                launch.join(FORK_SECONDS)
                if launch.is_alive():
                    raise ForkFailed(f"the fork server (pid {server}) stalled and its kill did not end it")
            if not failed and process.pid is not None:  # forked, even if only as its fork server was killed
                self._forked = server
                return Worker(process)
            if failed and not isinstance(failed[0], EOFError):  # EOF: the fork server ended before it forked
                raise failed[0]
        raise ForkFailed(f"the fork server did not fork {_worker_name(name)}")

    def close(self) -> None:
        """End the fork server (it ends when its pipe from here does), killed if it does not (stopped)."""
        with contextlib.suppress(OSError, TypeError):
            os.close(_server._forkserver_alive_fd)
        _server._forkserver_alive_fd = None
        if self._pidfd is not None and not wait([self._pidfd], ANSWER_SECONDS):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._pid:
            self._forget()

    def _ensure(self) -> None:
        """A fork server running: the one there is, or a new one (multiprocessing's own check and start)."""
        self._ended()
        with held_for_forks():
            forkserver.ensure_running()
        if _server._forkserver_pid != self._pid:
            self._pid = _server._forkserver_pid
            if self._pidfd is not None:
                os.close(self._pidfd)
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except (OSError, AttributeError):  # no pidfd here: multiprocessing sees it ended at the next start
                self._pidfd = None

    def _replace(self, pid: int, why: str) -> None:
        """Kill a stalled fork server; the next _ensure starts another. Its workers are given to this process."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._forget()
        replaced = self.restarts.add(ForkServerEnd.STALLED)
        log.error("the fork server (pid %d) %s: killed it, starting another (%d replaced)", pid, why, replaced)

    def _forget(self) -> int | None:
        """Reap the ended fork server and clear multiprocessing's record of it, as its own start of another does
        (this reaps it first, so its status can be logged); then the workers that ended under it, now given here."""
        code = None
        with contextlib.suppress(ChildProcessError):
            code = os.waitstatus_to_exitcode(os.waitpid(self._pid, 0)[1])
        with contextlib.suppress(OSError, TypeError):
            os.close(_server._forkserver_alive_fd)
        address = _server._forkserver_address
        if isinstance(address, str) and not address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(address)
        _server._forkserver_address = _server._forkserver_alive_fd = _server._forkserver_pid = None
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._pid, self._pidfd = 0, None
        for pid in list(_unreaped):
            _reap(pid)
        _unreaped.clear()
        return code


def _launch(process: BaseProcess, failed: list[BaseException]) -> None:
    try:
        with held_for_forks():  # the fork server is started again within, if it ended since _ensure
            process.start()
    except BaseException as exc:  # handed to the parent's thread, which raises it
        failed.append(exc)


def _worker_name(name: str) -> str:
    return f"worker {name.removeprefix('edgecache-w')}"


def exit_status(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
