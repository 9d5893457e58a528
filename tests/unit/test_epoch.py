"""The workers' change counter (storage.epoch): a worker sees every change another one made, whenever it was made,
and never takes its own for another's."""

from __future__ import annotations

from pathlib import Path

from edgecache.storage.epoch import Epoch
from edgecache.storage.purging import Purging


class _Racing(Epoch):
    """Another worker's change lands while this one bumps: between its read of the counter and its write."""

    __slots__ = ("between",)

    def bump(self, slot: int) -> None:
        between, self.between = getattr(self, "between", None), None
        if between is not None:
            between._changed()
        super().bump(slot)


def workers(epoch: Epoch, directory: Path) -> tuple[Purging, Purging]:
    """Two workers' views of one epoch (in one process: they share its memory as the workers' processes do)."""
    w0, w1 = Purging(directory), Purging(directory)
    w0.attach_epoch(epoch, 0)
    w1.attach_epoch(epoch, 1)
    return w0, w1


def test_a_change_another_worker_makes_while_this_one_bumps_is_seen(tmp_path: Path) -> None:
    """With one counter for all, a bump landing between another worker's read and its write was taken by that
    worker for its own: it never caught up on the change (an invalidation, a purge) and served what it held."""
    epoch = _Racing(2)
    w0, w1 = workers(epoch, tmp_path)
    epoch.between = w1
    w0._changed()
    assert (w0.stale(), w1.stale()) == (True, True)


def test_a_worker_takes_no_change_of_its_own_for_another_s(tmp_path: Path) -> None:
    w0, w1 = workers(Epoch(2), tmp_path)
    for _ in range(3):
        w0._changed()
    assert (w0.stale(), w1.stale()) == (False, True)
    w1._changed()
    assert (w0.stale(), w1.stale()) == (True, True)


def test_a_restarted_worker_sees_only_changes_made_after_it_started(tmp_path: Path) -> None:
    epoch = Epoch(2)
    _, w1 = workers(epoch, tmp_path)
    w1._changed()
    again = Purging(tmp_path)
    again.attach_epoch(epoch, 0)  # worker 0's successor: it read the disk after those changes
    assert not again.stale()
    w1._changed()
    assert again.stale()
