"""A change counter shared by the worker processes of one node: a purge or an invalidation in any of them is
seen by every other one before it answers its next request.

Workers share the disk tier but each keeps records, metadata and the purge table in memory. The counter lives
in an 8-byte file mapped into every worker; reading it is one memory load, so each request can afford it. Two
workers bumping it at once may lose one increment, but never leave it unchanged, which is all a reader needs.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_FORMAT = struct.Struct("<Q")


class Epoch:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size)
        finally:
            os.close(fd)

    def value(self) -> int:
        return int(_FORMAT.unpack_from(self._map, 0)[0])

    def bump(self) -> int:
        new = (self.value() + 1) % 2**64
        _FORMAT.pack_into(self._map, 0, new)
        return new

    def close(self) -> None:
        self._map.close()
