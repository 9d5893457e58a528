"""A change counter shared by the worker processes of one node: a purge or an invalidation in any of them is
seen by every other one before it answers its next request.

Workers share the disk tier but each keeps records, metadata and the purge table in memory. The counter lives
in 8 bytes of shared memory the parent process makes and hands to every worker it starts, as it does the
heartbeats; reading it is one memory load, so each request can afford it. It needs no disk (it was a file in the
cache directory: a worker that found that directory unusable at start died on it, where the disk is to be taken
out of service and the node to serve from origin). Two workers bumping it at once may lose one increment, but
never leave it unchanged, which is all a reader needs.
"""

from __future__ import annotations

import multiprocessing
import struct

_FORMAT = struct.Struct("<Q")


class Epoch:
    __slots__ = ("_memory",)

    def __init__(self) -> None:
        self._memory = multiprocessing.get_context("spawn").RawArray("B", _FORMAT.size)

    def value(self) -> int:
        return int(_FORMAT.unpack_from(self._memory, 0)[0])

    def bump(self) -> int:
        new = (self.value() + 1) % 2**64
        _FORMAT.pack_into(self._memory, 0, new)
        return new
