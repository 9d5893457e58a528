"""How the disk tier writes a large value: one file, its blocks reserved, one O_DIRECT write (SliceDisk).

A diskcache Disk: diskcache keeps its index and small values in SQLite, and calls `store` for each value.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterator

import diskcache
from diskcache.core import MODE_BINARY, UNKNOWN


class SliceDisk(diskcache.Disk):
    """diskcache's Disk with a cheaper write of a large bytes value.

    diskcache writes such a value by iterating a BytesIO over it, one write per b"\\n" in the data, through the
    page cache. A fill writes every slice it brings, and on a VM every new page-cache page costs a first touch:
    measured on the 2-core VM, 2.0-2.7 ms of CPU per MiB. Here the file's blocks are reserved up front and the
    value goes in one O_DIRECT write from an aligned buffer that each disk thread reuses: about 0.2 ms of CPU
    per MiB. Reads still go through the page cache, so a slice read often is cached there all the same.

    Its files are made and removed relative to the directory as opened (a descriptor), never by its path: once the
    disk's filesystem is unmounted (umount -l, a device gone), the path names the bare directory under it, on the
    parent filesystem, and a write in flight until the disk was taken out of service left its file there for good.

    Files go in 256 directories ("ab/<28 hex>.val", as git's loose objects), made once and kept. diskcache's own
    layout has 65,536 ("ab/cd/<28 hex>.val") and removes a directory with its last file: on a disk of fewer files
    than that (a fresh disk, the bench's 4 GiB) nearly every slice written made a directory and nearly every
    eviction removed one, 230 and ~150 us of a disk thread's CPU a slice (of a 1,130 us write). 256 kept ones
    cost 1 MiB of ext4 blocks; a 10 TiB disk of 1 MiB slices puts 40,000 files in each, which ext4's and XFS's
    hashed directories look up as fast as 150. Files an earlier version wrote keep their names (each row holds
    its file's), and their emptied directories still go.
    """

    def __init__(self, directory: str, min_file_size: int = 0, pickle_protocol: int = 0) -> None:
        super().__init__(directory, min_file_size, pickle_protocol)
        self.dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def close_dir(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)

    def place(self, value: bytes) -> str:
        """Write a large value's file in one O_DIRECT write; the name diskcache's row keeps for it."""
        filename, _ = self.filename()  # the path is not used: see the class docstring
        fd, direct = _create(self.dir_fd, filename)
        try:
            _reserve(fd, len(value))
            if direct:
                _write_direct(fd, value)
            else:
                _write_all(fd, memoryview(value))
        except BaseException:
            os.close(fd)
            os.unlink(filename, dir_fd=self.dir_fd)  # never leave a partial file behind for a row that will not exist
            raise
        os.close(fd)
        if (placed := getattr(_txn, "placed", None)) is not None:
            placed.append(filename)  # rolled back, the transaction leaves no row naming it: it goes (transaction)
        return filename

    def filename(self, key: object = UNKNOWN, value: object = UNKNOWN) -> tuple[str, str]:
        """A new file's name under the directory (see the class docstring), and its path (not used here)."""
        hex_name = os.urandom(15).hex()
        filename = os.path.join(hex_name[:2], hex_name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    @contextlib.contextmanager
    def transaction(self, cache: diskcache.Cache) -> Iterator[None]:
        """cache.transact(), but the files of the values deleted in it go only once it has committed. diskcache
        removes them as each call in it returns, before the commit: a process killed in between (kill -9, the OOM
        killer) left rows whose files were gone, values the disk said it held and could not read (DiskTier._gone).
        Now such a kill leaves files no row names, which storage.orphans deletes. Rolled back, the rows deleted in
        it are back and keep their files, and the files written in it, which no row names, go."""
        if getattr(_txn, "removed", None) is not None:  # within one already: the outermost removes them
            with cache.transact(retry=True):
                yield
            return
        removed: list[str] = []
        placed: list[str] = []
        _txn.removed, _txn.placed = removed, placed
        try:
            with cache.transact(retry=True):
                yield
        except BaseException:
            removed = placed
            raise
        finally:
            _txn.removed = _txn.placed = None
            for name in removed:
                self._remove_now(name)

    def remove(self, file_path: str) -> None:
        """diskcache's delete of a value's file: at once, or within transaction() once it has committed."""
        if (removed := getattr(_txn, "removed", None)) is not None:
            removed.append(file_path)
            return
        self._remove_now(file_path)

    def _remove_now(self, file_path: str) -> None:
        """No error if it is gone: two processes may both delete it."""
        with contextlib.suppress(OSError):
            os.unlink(file_path, dir_fd=self.dir_fd)
        parent = os.path.dirname(file_path)
        if os.path.dirname(parent):  # diskcache's two levels (a file of an earlier version): emptied, they go
            with contextlib.suppress(OSError):
                os.rmdir(parent, dir_fd=self.dir_fd)
                os.rmdir(os.path.dirname(parent), dir_fd=self.dir_fd)

    def fetch(self, mode: int, filename: str | None, value: object, read: bool) -> object:
        """diskcache's read of a stored value. One whose file is gone is noted for vanished(): diskcache's get()
        reports it only as a key it does not have, while its row stays and says it has."""
        try:
            return super().fetch(mode, filename, value, read)
        except FileNotFoundError:
            _vanished.name = filename
            raise

    @staticmethod
    def vanished() -> str | None:
        """The file this thread's last fetch found gone, if any, told once."""
        name: str | None = getattr(_vanished, "name", None)
        _vanished.name = None
        return name

    def store(self, value: object, read: bool, key: object = UNKNOWN) -> tuple[int, int, str | None, object]:
        if type(value) is not bytes or len(value) < self.min_file_size:
            return super().store(value, read, key)
        return len(value), MODE_BINARY, self.place(value), None


_ALIGN = 4096  # O_DIRECT wants the buffer's address and the write's length aligned to the logical block size
_buffers = threading.local()
_vanished = threading.local()  # the file a fetch of this thread found gone (SliceDisk.vanished)
_txn = threading.local()  # within SliceDisk.transaction: the files to remove after its commit, and those it placed


def _create(dir_fd: int, path: str) -> tuple[int, bool]:
    """A new file for writing at `path` under the directory `dir_fd`, opened O_DIRECT where the filesystem allows
    it; and whether it was. Its directory is made only when missing: each mkdir of one that exists was a failed
    system call and a Python exception, every slice."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    # Another process's delete of an emptied directory (of diskcache's layout, which an earlier version of the
    # node still runs) may remove it between mkdir and open: try again, as diskcache does.
    for attempt in range(10):
        try:
            try:
                direct = os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644, dir_fd=dir_fd)
                return direct, hasattr(os, "O_DIRECT")
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return os.open(path, flags, 0o644, dir_fd=dir_fd), False  # no O_DIRECT on this filesystem
        except FileNotFoundError:
            if attempt == 9:
                raise
            _makedirs(dir_fd, os.path.dirname(path))
    raise AssertionError("unreachable")


def _makedirs(dir_fd: int, path: str) -> None:
    """os.makedirs(path, exist_ok=True) under the directory `dir_fd`."""
    parts = [p for p in path.split(os.sep) if p]
    for n in range(1, len(parts) + 1):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.sep.join(parts[:n]), dir_fd=dir_fd)


def _reserve(fd: int, length: int) -> None:
    """Allocate the file's blocks up front; a filesystem that cannot (EOPNOTSUPP) just allocates as it writes."""
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _write_direct(fd: int, value: bytes) -> None:
    padded = -(-len(value) // _ALIGN) * _ALIGN
    buf: mmap.mmap | None = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < padded:
        buf = _buffers.buf = mmap.mmap(-1, padded)  # page-aligned, reused by this thread for every write
    buf[: len(value)] = value
    _write_all(fd, memoryview(buf)[:padded])
    if padded != len(value):
        os.ftruncate(fd, len(value))  # the padding was only there for O_DIRECT


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]
