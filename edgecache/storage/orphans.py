"""Value files no row names: what a disk process killed mid-write leaves, found and deleted at the next start."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("edgecache.storage.disk")


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
