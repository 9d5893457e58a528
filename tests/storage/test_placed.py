"""The list of disks each disk was last used under (storage.placed): when the node must doubt what it stored."""

from __future__ import annotations

from pathlib import Path

from edgecache.config import Disk
from edgecache.storage.placed import FILE, since


def test_a_change_of_the_disks_is_the_moment_everything_before_it_is_doubted(tmp_path: Path) -> None:
    a, b, c = (Disk(tmp_path / n, 2**30) for n in "abc")
    for d in (a, b, c):
        d.path.mkdir()
    # Nothing recorded anywhere: a first start (or a version that kept no record); nothing to doubt.
    assert since([a, b], [a.path, b.path], 100.0) == 0.0
    assert since([a, b], [a.path, b.path], 200.0) == 0.0  # the same disks: as recorded
    assert since([a, b, c], [a.path, b.path, c.path], 300.0) == 300.0  # one added
    assert since([a, b, c], [a.path, b.path, c.path], 400.0) == 300.0
    assert since([a, b], [a.path, b.path], 500.0) == 500.0  # back to two: a change again
    assert since([a, Disk(b.path, 2**31)], [a.path, b.path], 600.0) == 600.0  # resized: its keys move
    assert since([Disk(b.path, 2**31), a], [b.path, a.path], 700.0) == 600.0  # listed in another order: no change


def test_a_disk_out_of_service_at_a_change_is_doubted_from_that_change_when_it_is_back(tmp_path: Path) -> None:
    a, b = Disk(tmp_path / "a", 2**30), Disk(tmp_path / "b", 2**30)
    a.path.mkdir()
    b.path.mkdir()
    assert since([a, b], [a.path, b.path], 100.0) == 0.0
    assert since([a], [a.path], 200.0) == 200.0
    assert since([a, b], [a.path], 300.0) == 300.0  # b could not be opened: only a's record is written
    # b is back, its record older than a's: the later change still holds, and all b holds is from before it.
    assert since([a, b], [a.path, b.path], 400.0) == 300.0


def test_an_unreadable_record_is_a_change(tmp_path: Path) -> None:
    a, b = Disk(tmp_path / "a", 2**30), Disk(tmp_path / "b", 2**30)
    a.path.mkdir()
    b.path.mkdir()
    assert since([a, b], [a.path, b.path], 100.0) == 0.0
    (b.path / FILE).write_bytes(b"\xff not json")
    assert since([a, b], [a.path, b.path], 200.0) == 200.0
