"""The answers to the requests of one read written in one system call, as they would be by separate ones.

A node that forwards a batch of requests sends them on one connection, pipelined (proxy.peerpool), and the owner
reads them in one read; answered one write each, the batch cost the owner as many writes as requests, and the
forwarding node as many reads. So while a connection answers the heads of one read (FastPath._process), the
answers written whole from memory (FastPath.send) are held here, and written together when that processing ends,
whatever ended it: no timer, so a lone request is written as soon as before, in the same turn.

Bytes must reach the socket in order, so what is held is written before anything else can be: before a head is
decided any other way than a plain answer from memory (decided()), before a head that is not whole yet (head_end(),
where a bad one gets its 400 or is handed to aiohttp), and before an answer that closes its connection. What is held
is bounded (HELD_BYTES, the size of a transport's write buffer before it asks its protocol to pause), so a client
pipelining many heads is met by the write buffer's flow control as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecache.proxy.decide import HELD, Prepared

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgecache.proxy.fastpath import FastPath

HELD_BYTES = 64 * 1024  # uvloop's (and asyncio's) default high-water mark of a transport's write buffer


class Cork:
    """One per worker: a loop answers one connection's heads at a time (FastPath._answer_heads never awaits)."""

    def __init__(self) -> None:
        self.conn: FastPath | None = None  # the connection whose heads are being answered
        self.held: list[bytes | memoryview] = []
        self.size = 0

    def around(self, conn: FastPath, answer_heads: Callable[[], None]) -> None:
        """Answer the heads `conn` has; what is held is written when that is done, whatever ended it."""
        outer = self.conn
        if outer is not None:  # a connection answered within another's turn (never expected): nothing is held
            self.flush()
        self.conn = conn
        try:
            answer_heads()
        finally:
            self.flush()
            self.conn = outer

    def write(self, conn: FastPath, persists: bool, data: list[bytes | memoryview]) -> None:
        """An answer from memory: held while its connection answers more heads, else written now."""
        if conn is not self.conn or not persists:  # one that closes its connection goes out with all before it
            self.flush()
            if conn.transport is not None:
                conn.transport.writelines(data)
            return
        self.held.extend(data)
        self.size += sum(len(x) for x in data)
        if self.size >= HELD_BYTES:
            self.flush()

    def decided(self, conn: FastPath, prepared: object) -> None:
        """A head was decided: unless its answer is one write() holds (a whole answer from memory), what is held
        goes out first, as whatever answers it (a disk read, a fill, a forward, a refusal, aiohttp) writes itself."""
        if self.held and not self._plain(conn, prepared):
            self.flush()

    def head_end(self, conn: FastPath) -> int:
        """Where the head at the front of `conn`'s input ends; -1, and what is held written, when it is not whole."""
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0 and self.held:
            self.flush()
        return end

    def flush(self) -> None:
        held, conn = self.held, self.conn
        if not held:
            return
        self.held, self.size = [], 0
        if conn is not None and conn.transport is not None:
            conn.transport.writelines(held)

    def _plain(self, conn: FastPath, prepared: object) -> bool:
        """Whether FastPath._answer sends this decision's answer with send(), at once and whole from memory."""
        if not isinstance(prepared, Prepared) or conn.started is not None or conn.tls:
            return False
        p = prepared
        if p.hit.parts is not None or len(p.slices) > HELD:
            return False
        in_memory = conn.server.shared.engine.store.memory_slice
        return all(in_memory(name) is not None for name, _, _ in p.slices)
