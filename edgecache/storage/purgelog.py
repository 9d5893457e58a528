"""The purge table's file: a snapshot line, then one line per purge since.

A purge appends its line (O(1) I/O: 400 purges rewriting the whole table grew it 15 MB and a purge from 12 to
44 ms). Once the lines since the snapshot outnumber the table's marks by COMPACT_SLACK, the file is rewritten
as one snapshot line, beside it and renamed over it, so it never holds more than about twice the table plus
COMPACT_SLACK lines. Every write is flushed to the disk before the purge is answered: a node that goes down
and comes back still has every purge it confirmed.

It lives beside the disk tier, not in it: diskcache evicts what was stored longest ago, and an evicted purge
table would give every purged object back to lookups. Writes run on one thread, in the order the purges were
applied, so a snapshot never lands before a line it already contains is appended after it.

The same file keeps the cluster's side of purges (core.purge.SyncLog): each purge line carries the purge's
identity, a URL purge (which changes no mark) has a line of its own, and the snapshot holds the entries kept for
peers, so a node that restarts still knows which purges it applied and can pass them on.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecache.core.purge import PurgeTable, SyncLog, read_log, snapshot

COMPACT_SLACK = 64


class PurgeLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: int | None = None  # purge lines after the snapshot; None: no file (yet)
        self._torn = False
        self.me = ""  # the sync state's `me` the file holds (a line names a new one: core.purge.me_line)

    def read(self) -> PurgeTable | None:
        """The table the file holds; None when there is no file."""
        found = self.read_all()
        return found[0] if found is not None else None

    def read_all(self) -> tuple[PurgeTable, SyncLog] | None:
        """The table and the sync state the file holds; None when there is no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._lines = None
            return None
        self._lines = data.count(b"\n") - 1
        self._torn = not data.endswith(b"\n")  # a crash mid-append: the next line must not join it
        table, sync = read_log(data)
        self.me = sync.me
        return table, sync

    def read_newest(self, others: list[Path]) -> tuple[PurgeTable, SyncLog] | None:
        """As read_all, from this file or the newest of `others` (the same file on the node's other disks) when
        one is newer: the disks were listed in another order, or the first one left the list, since this one was
        written. The next purge then writes the whole table here (a snapshot), so this file is the newest again."""
        newest, at = self.path, _mtime(self.path)
        for other in others:
            if (when := _mtime(other)) is not None and (at is None or when > at):
                newest, at = other, when
        if newest == self.path:
            return self.read_all()
        found = PurgeLog(newest).read_all()
        self._lines, self._torn = None, False
        self.me = found[1].me if found is not None else ""
        return found

    def append(self, line: bytes, table: PurgeTable, sync: SyncLog | None = None) -> None:
        """Record one purge (`line`, PurgeTable.op or core.purge.entry_line) whose result is `table` and `sync`."""
        kept = len(table.marks) + (len(sync.entries) if sync is not None else 0)
        if self._lines is None or self._lines + 1 > kept + COMPACT_SLACK:
            self._rewrite(table, sync or SyncLog())
            return
        with self.path.open("ab") as f:
            f.write(b"\n" + line if self._torn else line)
            f.flush()
            os.fsync(f.fileno())
        self._lines += 1
        self._torn = False

    def _rewrite(self, table: PurgeTable, sync: SyncLog) -> None:
        spare = self.path.with_name(self.path.name + ".new")
        with spare.open("wb") as f:
            f.write(snapshot(table, sync) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(spare, self.path)
        # The rename is only durable once the directory is: without this a crash could bring the old file back,
        # and with it lose the purge that caused the rewrite.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._lines, self._torn = 0, False


def _mtime(path: Path) -> int | None:
    """When the file at `path` was last written; None when there is none (or it cannot be looked at: reading it
    says why, for this disk's own file)."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
