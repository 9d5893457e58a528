"""Value files no row names (left by a process killed between a file's write and its row's commit): found by
reading the rows and the files in one order, and deleted when older than the start."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from edgecache.storage.orphans import Sweeper, _sorted_files, delete_orphans


def _tree(root: Path, rels: list[str]) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


def test_files_come_in_the_order_of_their_sorted_paths(tmp_path: Path) -> None:
    """A directory sorts as its name and '/': "a.val" before "a/b.val", "ab/c.val" after "ab/cd.val"."""
    rels = ["a.val", "a/b.val", "a-/z.val", "ab/cd/x.val", "ab/c.val", "ab/cd.val", "ab/cd/0.val", "b", "0/1/2.val"]
    _tree(tmp_path, rels)
    assert list(_sorted_files(tmp_path)) == sorted(rels)


def test_only_old_value_files_no_row_names_are_deleted(tmp_path: Path) -> None:
    rels = [f"{a:02x}/{b:02x}/{n:028x}.val" for a in range(0, 256, 37) for b in (0, 9, 200) for n in range(4)]
    named = rels[::3]
    _tree(tmp_path, [*rels, "cache.db-wal-not-a-value", "ab/notes.txt"])
    with contextlib.closing(sqlite3.connect(tmp_path / "cache.db")) as con, con:
        con.execute("CREATE TABLE Cache (key BLOB, filename TEXT)")
        con.executemany("INSERT INTO Cache VALUES (?, ?)", [(b"k", rel) for rel in reversed(named)])
        con.execute("INSERT INTO Cache VALUES (?, NULL)", (b"small",))  # a value kept in the row itself
    newer = tmp_path / rels[1]  # unnamed, but written after the start began: a write of this process
    os.utime(newer, (time.time() + 60, time.time() + 60))

    assert delete_orphans(tmp_path, before=time.time() + 30) == len(rels) - len(named) - 1

    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.val"))
    assert left == sorted([*named, rels[1]])
    assert (tmp_path / "ab/notes.txt").exists()
    assert (tmp_path / "cache.db-wal-not-a-value").exists()


def test_memory_stays_flat_however_many_rows_a_disk_holds(tmp_path: Path) -> None:
    """The names are compared as they come, never held: a set of a disk's ten million names would take
    gigabytes at every start (100,000 here, about 13 MB held as a set)."""
    import tracemalloc

    with contextlib.closing(sqlite3.connect(tmp_path / "cache.db")) as con, con:
        con.execute("CREATE TABLE Cache (key BLOB, filename TEXT)")
        con.executemany(
            "INSERT INTO Cache VALUES (?, ?)", ((b"k", f"{n % 256:02x}/00/{n:028x}.val") for n in range(100_000))
        )
    _tree(tmp_path, ["07/00/orphan.val"])
    tracemalloc.start()
    try:
        assert delete_orphans(tmp_path, before=time.time() + 30) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_a_sweeper_deletes_the_files_written_before_a_death_once_it_has_settled(tmp_path: Path) -> None:
    """A worker killed beside others left its unnamed files until the whole node restarted. A file no row names
    that is younger than the death may be a live write whose row is not committed yet: it is kept."""
    named, dead, young = "00/01/" + "a" * 28 + ".val", "00/02/" + "b" * 28 + ".val", "00/03/" + "c" * 28 + ".val"
    _tree(tmp_path, [named, dead])
    with contextlib.closing(sqlite3.connect(tmp_path / "cache.db")) as con, con:
        con.execute("CREATE TABLE Cache (key BLOB, filename TEXT)")
        con.execute("INSERT INTO Cache VALUES (?, ?)", (b"k", named))
    sweeper = Sweeper(lambda: [tmp_path], settle=0.2)
    sweeper.died()
    sweeper.died()  # a second death before the first's sweep: swept together
    _tree(tmp_path, [young])
    os.utime(tmp_path / young, (time.time() + 60, time.time() + 60))  # written after the death
    deadline = time.monotonic() + 30
    try:
        while (tmp_path / dead).exists():
            assert time.monotonic() < deadline, "never swept"
            time.sleep(0.01)  # polling another thread's work, with a deadline
    finally:
        sweeper.stop()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.val")) == [named, young]
