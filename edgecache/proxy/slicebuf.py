"""A slice of a fill's body as it arrives (proxy.fill): the origin client's chunks, kept as they came."""

from __future__ import annotations

import bisect


class Parts:
    """The chunks of a slice still arriving, kept as the origin client gave them: nothing is copied until the
    slice is complete and joined once. On a VM every fresh MiB touched costs about 0.5 ms, so copies matter."""

    __slots__ = ("chunks", "ends", "length")

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.ends: list[int] = []  # offset after each chunk
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def append(self, chunk: bytes | memoryview) -> None:
        self.chunks.append(chunk)
        self.length += len(chunk)
        self.ends.append(self.length)

    def view(self, lo: int, hi: int) -> memoryview:
        """Bytes from `lo`, up to `hi` or the end of the chunk holding `lo`, whichever comes first."""
        i = bisect.bisect_right(self.ends, lo)
        start = self.ends[i] - len(self.chunks[i])
        return memoryview(self.chunks[i])[lo - start : min(hi, self.ends[i]) - start]

    def join(self) -> bytes:
        return b"".join(self.chunks)


def view_of(buf: Parts | bytes, lo: int, hi: int) -> memoryview:
    return buf.view(lo, hi) if isinstance(buf, Parts) else memoryview(buf)[lo:hi]
