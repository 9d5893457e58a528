"""Value files no row names: what a disk process killed mid-write leaves, found and deleted at the next start, and
(Sweeper) a while after each death of a worker that others outlived."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("edgecache.storage.disk")

SETTLE_SECONDS = 60.0  # after a death: a value file older than it whose row is still missing is no live write's


def delete_orphans(directory: Path, before: float) -> int:
    """Delete the value files no row of the database names, written before `before`; how many.

    diskcache writes a value's file, then commits its row (and deletes a row, then its file): a process killed in
    between (kill -9, the OOM killer) leaves a file no row will ever name. It is outside every budget and nothing
    else deletes it, so each crash during fills kept up to a slice per disk thread on the disk for good. Run only
    by the process that opened the disk alone: no other process was writing, and every file written from then on
    is newer than `before` (the margin covers the coarse clock of file times). The rows and the files are read in
    one order and compared as they come, so memory stays flat however many slices a disk holds (a set of ten
    million names would take gigabytes, at every start)."""
    deleted = 0
    try:
        con = sqlite3.connect(f"file:{directory / 'cache.db'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL ORDER BY filename")
            deleted = sum(_delete_old(directory / rel, before) for rel in _unnamed(_sorted_files(directory), rows))
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.warning("disk tier: %s: value files not checked for orphans: %s", directory, exc)
    if deleted:
        log.warning(
            "disk tier: %s: deleted %d value files no row named (left by a process killed mid-write)",
            directory,
            deleted,
        )
    return deleted


def _unnamed(files: Iterator[str], named: Iterator[tuple[str]]) -> Iterator[str]:
    """The value files (relative paths) of `files` that `named` lacks, both given in SQLite's (binary) order."""
    row = next(named, None)
    for rel in files:
        while row is not None and row[0] < rel:
            row = next(named, None)
        if rel.endswith(".val") and (row is None or row[0] != rel):
            yield rel


def _sorted_files(directory: Path, prefix: str = "") -> Iterator[str]:
    """The relative paths of the files under `directory`, in the order a sorted list of them has: a directory
    sorts as its name and "/", so "a.val" comes before "a/b.val" as it does there."""
    try:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e.path) for e in it]
    except OSError:
        return  # gone meanwhile, or the disk failing: its own checks see to that
    for name, path in sorted(entries):
        if name.endswith("/"):
            yield from _sorted_files(Path(path), prefix + name)
        else:
            yield prefix + name


def _delete_old(path: Path, before: float) -> bool:
    try:
        if path.stat().st_mtime < before:
            path.unlink()
            return True
    except OSError:
        pass  # gone meanwhile, or the disk failing: its own checks see to that
    return False


class Sweeper:
    """Deletes the value files no row names that were written before a worker's death, `settle` seconds after it,
    on a thread of its own. A worker killed beside others that keep the disks open leaves them, and its successor
    does not have a disk alone (delete_orphans at its start): they stayed outside the budget until the whole node
    restarted (27 files after 12 kills in a soak). A live worker's write makes its file before it commits the
    row naming it, within moments: a file older than the death whose row is still missing `settle` seconds after
    it is none of theirs, and one younger is never looked at. At most two deaths wait (the first and the last:
    the sweep for the last covers those between), and a death that waits is never put off by later ones."""

    def __init__(self, disks: Callable[[], list[Path]], settle: float = SETTLE_SECONDS) -> None:
        self._disks = disks  # the directories, as configured when a sweep begins
        self._settle = settle
        self._deaths: list[tuple[float, float]] = []  # (when its sweep is due, monotonic; when it died, wall clock)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def died(self) -> None:
        """A worker has died (and been reaped) now."""
        with self._changed:
            self._deaths[1:] = [(time.monotonic() + self._settle, time.time())]
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="disk-orphans", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """No sweep begins from now on (one under way ends with its disk)."""
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def _run(self) -> None:
        while (before := self._next()) is not None:
            for directory in self._disks():
                try:
                    delete_orphans(directory, before)
                except Exception:  # never the end of the sweeps to come
                    log.exception("disk tier: %s: value files not checked for orphans", directory)

    def _next(self) -> float | None:
        """Once a death's sweep is due: the time of the last death due (a sweep covers those before it too). None
        once stopped."""
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                due = [died for at, died in self._deaths if at <= now]
                if due:
                    self._deaths = [(at, died) for at, died in self._deaths if at > now]
                    return max(due)
                self._changed.wait(self._deaths[0][0] - now if self._deaths else None)
            return None
