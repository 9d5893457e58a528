"""Room kept on each disk's filesystem for its index: a file of `size_for` bytes, given up when nothing else is left.

SQLite must write to open a disk (diskcache's settings, the index's tables) and to delete from it. On a filesystem
that something else filled to the last byte it can do neither: a disk full at start was out of service, every
object it held a miss until a reload found room, and a full disk in service could not evict to make room. The
reserve is given up then (release), so the open or the eviction happens; it is made again (keep) once the
filesystem has room for it twice over, so that another worker never takes back the room before it is used.
Blocking: call these off the event loop.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

NAME = ".edgecache-reserve"


def size_for(disk_size: int) -> int:
    """1/256 of the disk's budget, between 1 MiB and 16 MiB: a few thousand pages of SQLite's log."""
    return min(max(disk_size // 256, 2**20), 16 * 2**20)


def keep(directory: Path, size: int) -> bool:
    """Make the reserve when it is missing and the filesystem has room for it twice over; whether it is there."""
    path = directory / NAME
    if path.exists():
        return True
    st = os.statvfs(directory)
    if st.f_bavail * st.f_frsize < 2 * size:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it
        return True
    try:
        os.posix_fallocate(fd, 0, size)  # blocks really taken, not a sparse file the filesystem never held
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)
    return True


def release(directory: Path) -> bool:
    """Give the reserve's room to the filesystem; whether there was one."""
    try:
        os.unlink(directory / NAME)
    except FileNotFoundError:
        return False
    return True
