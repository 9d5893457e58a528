"""The node's runtime directories under the temp dir (worker 0's internal socket, the workers' metrics files): each
marked as its node's for the node's whole life, and those of nodes that died removed by the next node to start.

A directory is its node's while a lock on its LOCK file is held: shared, by the parent from the directory's making
to its removal, and by every worker that uses it (opened anew in the worker: the fork server, which forks the
workers, is exec'd and has none of the parent's descriptors). A lock, not a pid: pids are reused, and a node in
another pid namespace sharing /tmp has pids this one cannot see. The kernel drops the lock with the last process
that held it, however it ended, so a directory whose lock can be taken exclusively is one no process of a node
uses any more. The lock file appears under its name already locked (made as STAGED, locked, renamed), so a sweep
never takes a directory being made. What counts as a runtime directory is decided in edgecache.core.rundirs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edgecache.core.rundirs import LOCK, STAGED, Kind, sweepable, too_long_for_sockets

log = logging.getLogger(__name__)

_held: list[int] = []  # a worker's descriptors of its locks: open for the process's life


class RunDir:
    """A new runtime directory under the temp dir, this node's until remove()."""

    def __init__(self, kind: Kind) -> None:
        if kind is Kind.PRIVATE and (problem := too_long_for_sockets(os.fsencode(tempfile.gettempdir()))):
            raise OSError(errno.ENAMETOOLONG, problem)
        self.path = Path(tempfile.mkdtemp(prefix=kind.value))  # mode 0700
        self._fd = -1
        try:
            self._fd = os.open(
                self.path / STAGED, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            os.rename(self.path / STAGED, self.path / LOCK)
        except OSError:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def hold(*directories: Path | str | None) -> None:
    """In a worker: hold the lock of each runtime directory it uses, so that none is taken for a dead node's while
    the worker outlives its parent (stopped, say). Never waits: a lock held exclusively is a sweep's, of a directory
    whose parent is gone, and the worker ends with its parent (lifecycle.die_with_parent)."""
    for directory in directories:
        if directory is not None:
            with contextlib.suppress(OSError):
                _held.append(_locked(Path(directory), fcntl.LOCK_SH))


def _locked(directory: Path, how: int) -> int:
    """A descriptor of `directory`'s lock file, locked `how` without waiting; OSError when it cannot be
    (FileNotFoundError: no lock file; BlockingIOError: a process holds it in the other mode)."""
    fd = os.open(directory / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def sweep(directory: Path, uid: int) -> int:
    """Remove the runtime directories under `directory` that nodes run by `uid` left as they died; how many. A
    failure is logged and the node starts all the same."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("runtime directories of dead nodes not looked for in %s: %s", directory, exc)
        return 0
    removed = 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if sweepable(entry.name, st.st_mode, st.st_uid, uid) is not None and _remove_dead(Path(entry.path)):
                removed += 1
        except OSError as exc:
            log.warning("runtime directory of a dead node not removed: %s: %s", entry.path, exc)
    if removed:
        log.info("removed %d runtime directories of nodes that died, under %s", removed, directory)
    return removed


def _remove_dead(path: Path) -> bool:
    """Remove `path` if its lock can be taken: no process of a node holds it. A directory without a lock file
    (being made, or made before nodes locked them) is left."""
    try:
        fd = _locked(path, fcntl.LOCK_EX)
    except (FileNotFoundError, BlockingIOError):
        return False
    try:  # held while it is removed: another node's sweep at the same moment leaves it to this one, or finds it gone
        shutil.rmtree(path)
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)
    return True
