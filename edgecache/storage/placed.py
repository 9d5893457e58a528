"""The list of disks each disk was last used under: after a change, what was stored before it is revalidated.

A key's primary record (the generation a URL purge gives it) lives on the disk placement (storage.disks) gives
the key. When cache.disks changes (a disk added, removed or resized), keys move: a purge taken afterwards is
written to a key's new disk while its old disk keeps the record from before, and were the list changed back, that
record and the copies stored under it would be found again: the purge undone. The purge log of the first disk is
lost the same way when another disk comes first. Nothing on a disk says which of its records were superseded
elsewhere meanwhile, so after any change the node serves nothing stored before it without asking the origin: a
soft purge of everything at the moment of the change, which costs a conditional request per object where
forgetting the disks would cost every object's bytes. The moment is kept on every disk, so the next start with
the same disks doubts exactly as much, and a crash part way through writing it leaves a disk that disagrees,
which only moves the moment later.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from edgecache.config.model import Disk

log = logging.getLogger("edgecache.storage.disk")

FILE = "placement.json"


def signature(disks: Sequence[Disk]) -> list[list[object]]:
    """What placement depends on: the disks' paths and, with more than one, their sizes (its weights)."""
    if len(disks) == 1:
        return [[str(disks[0].path)]]
    return sorted([str(d.path), d.size] for d in disks)


def since(disks: Sequence[Disk], usable: Sequence[Path], now: float) -> float:
    """The time of the last change of `disks`, as the disks that could be opened (`usable`) recorded it; `now`
    (and recorded on each of them) when one of them was last used under another list or has no record beside
    others that have one. 0 when none has a record: a first start, or the first of a version that kept none
    (doubting the whole cache then would send the origin a request for every object, for a change that is
    almost never made in the same restart). Blocking."""
    wanted = signature(disks)
    seen = [_read(path) for path in usable]
    times = [at for sig, at in (s for s in seen if s is not None) if sig == wanted]
    if usable and len(times) == len(usable):
        return max(times)
    known = any(s is not None for s in seen)
    since = now if known else 0.0
    for path in usable:
        _write(path, wanted, since)
    if known:
        log.warning("cache.disks changed since the last start: what was stored before now is revalidated")
    return since


def _read(directory: Path) -> tuple[list[list[object]], float] | None:
    try:
        doc = json.loads((directory / FILE).read_bytes())
        sig, at = doc["disks"], float(doc["since"])
    except (OSError, ValueError, TypeError, KeyError):  # none yet, or unreadable: no placement known
        return None
    return (sig, at) if isinstance(sig, list) else None


def _write(directory: Path, sig: list[list[object]], now: float) -> None:
    tmp = directory / f".{FILE}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps({"disks": sig, "since": now}))
        os.replace(tmp, directory / FILE)
    except OSError as exc:  # the next start finds it missing and doubts again: never less than it should
        log.warning("%s: placement not recorded: %s", directory, exc)
