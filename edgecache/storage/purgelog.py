"""The purge table's file: a snapshot line, then one line per purge since.

A purge appends its line (O(1) I/O: 400 purges rewriting the whole table grew it 15 MB and a purge from 12 to
44 ms). Once the lines since the snapshot outnumber the table's marks by COMPACT_SLACK, the file is rewritten
as one snapshot line, beside it and renamed over it, so it never holds more than about twice the table plus
COMPACT_SLACK lines. Every write is flushed to the disk before the purge is answered: a node that goes down
and comes back still has every purge it confirmed.

It lives beside the disk tier, not in it: diskcache evicts what was stored longest ago, and an evicted purge
table would give every purged object back to lookups. Writes run on one thread, in the order the purges were
applied, so a snapshot never lands before a line it already contains is appended after it.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecache.core.purge import PurgeTable

COMPACT_SLACK = 64


class PurgeLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: int | None = None  # purge lines after the snapshot; None: no file (yet)
        self._torn = False

    def read(self) -> PurgeTable | None:
        """The table the file holds; None when there is no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._lines = None
            return None
        self._lines = data.count(b"\n") - 1
        self._torn = not data.endswith(b"\n")  # a crash mid-append: the next line must not join it
        return PurgeTable.from_log(data)

    def append(self, line: bytes, table: PurgeTable) -> None:
        """Record one purge (`line`, PurgeTable.op) whose result is `table`."""
        if self._lines is None or self._lines + 1 > len(table.marks) + COMPACT_SLACK:
            self._rewrite(table)
            return
        with self.path.open("ab") as f:
            f.write(b"\n" + line if self._torn else line)
            f.flush()
            os.fsync(f.fileno())
        self._lines += 1
        self._torn = False

    def _rewrite(self, table: PurgeTable) -> None:
        spare = self.path.with_name(self.path.name + ".new")
        with spare.open("wb") as f:
            f.write(table.to_bytes() + b"\n")
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
