"""The answers to the requests of one read written in one system call, as they would be by separate ones.

A node that forwards a batch of requests sends them on one connection, pipelined (proxy.peerpool), and the owner
reads them in one read; answered one write each, the batch cost the owner as many writes as requests, and the
forwarding node as many reads. So while a connection answers the heads of one read (FastPath._process), the
answers written whole from memory (FastPath.send) are held here, and written together when that processing ends,
whatever ended it: no timer, so a lone request is written as soon as before, in the same turn.

Bytes must reach the socket in order, so what is held is written before anything else can be: before a head is
decided any other way than an answer whole from memory (decided(), way()), before a head that is not whole yet
(head_end(), where a bad one gets its 400 or is handed to aiohttp), and before an answer that closes its connection.
What is held is bounded (HELD_BYTES, the size of a transport's write buffer before it asks its protocol to pause),
so a client pipelining many heads is met by the write buffer's flow control as before.

A large answer is also held past its connection's turn, to the end of the loop's turn (Parked): copying a MiB into
the socket evicts from the CPU's caches all the Python code and data the next connection's decision needs, so the
heads of every connection one poll found readable are decided first, warm, and their answers written after. Until
then the connection's transport is a Parked, which writes what it holds before anything else uses the transport:
a timer, a half-close, a drain or a close reach the client after the answer, as they did when it was written at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, cast

from edgecache.proxy import refuse
from edgecache.proxy.diskhit import TLS_PIECE
from edgecache.proxy.heldslices import HELD
from edgecache.proxy.prepared import Prepared

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

    from edgecache.proxy.fastpath import FastPath


class Way(enum.Enum):
    """How a hit is answered when not whole from memory: each writes itself (proxy.multipart, proxy.diskhit)."""

    MULTIPART = "multipart"
    STREAM = "stream"  # a large answer, read from the tiers a piece at a time
    DISK = "disk"  # a slice not in memory: read from disk first


MULTIPART, STREAM, DISK = Way.MULTIPART, Way.STREAM, Way.DISK
HELD_BYTES = 64 * 1024  # uvloop's (and asyncio's) default high-water mark of a transport's write buffer
PARK_BYTES = HELD_BYTES  # answers smaller than this do not evict what the next decision needs: written at once


class Cork:
    """One per worker: a loop answers one connection's heads at a time (FastPath._answer_heads never awaits)."""

    def __init__(self) -> None:
        self.conn: FastPath | None = None  # the connection whose heads are being answered
        self.held: list[bytes | memoryview] = []
        self.size = 0
        self.deciding = False  # the head at the front is being decided: nothing of its answer is written yet
        self.parked: list[Parked] = []  # large answers held to the end of the loop's turn, in the order decided

    def around(self, conn: FastPath, answer_heads: Callable[[], None]) -> None:
        """Answer the heads `conn` has; what is held is written when that is done, whatever ended it."""
        outer = self.conn
        if outer is not None:  # a connection answered within another's turn (never expected): nothing is held
            self.flush()
        transport: object = conn.transport
        if type(transport) is Parked:  # its answer of this loop's turn goes before anything it answers now
            transport.release()
        self.conn = conn
        try:
            answer_heads()
        except Exception as exc:
            if not self.deciding:
                raise  # its answer may have begun: the connection is cut (the loop's handler logs it)
            self.flush()  # the answers before it first, then its 500 (refuse.failed), then the close
            refuse.failed(conn, exc)
        finally:
            self.deciding = False
            self.park() if self.size >= PARK_BYTES else self.flush()
            self.conn = outer

    def write(
        self, conn: FastPath, persists: bool, data: list[bytes | memoryview], size: int, now: bool = False
    ) -> None:
        """An answer from memory: held while its connection has more of this read to answer, and to the end of the
        turn (around) when it is the last of several or large (`size`: its bytes); written now when it is small and
        alone, and with what is held when it closes its connection or its bytes are `now`'s: in buffers lent only
        until the socket has taken them (diskhit.answer checks)."""
        if conn is not self.conn:
            self.flush()
        elif persists and not now:
            if conn.buf or self.held or size >= PARK_BYTES:  # a small lone one, the common case, goes at once
                self.held.extend(data)
                self.size += size
                if conn.buf and self.size >= HELD_BYTES:  # more input, answered as the write buffer lets it
                    self.flush()
                return
        elif self.held:
            self.held.extend(data)
            self.flush()
            return
        if conn.transport is not None:
            conn.transport.writelines(data)

    def decided(self, conn: FastPath, prepared: object) -> None:
        """A head was decided: unless it may be answered whole from memory (way() says, and writes what is held
        when it is not), what is held goes out first, as whatever answers it (a fill, a forward, a refusal, a
        passed request, aiohttp) writes itself."""
        self.deciding = False
        if self.held and (not isinstance(prepared, Prepared) or conn.started is not None):
            self.flush()

    def head_end(self, conn: FastPath) -> int:
        """Where the head at the front of `conn`'s input ends; -1, and what is held written, when it is not whole."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n", len(buf) - len(buf.lstrip(b"\r\n")))  # llhttp skips CRLFs before a head
        self.deciding = end >= 0  # until decided(): a failure meanwhile is answered 500 (around)
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

    def park(self) -> None:
        """Hold what is held to the end of the loop's turn (release_parked), its connection's transport a Parked."""
        held, conn = self.held, self.conn
        self.held, self.size = [], 0
        if conn is not None:
            self.park_for(conn, held)

    def relayed(self, conn: FastPath, data: list[bytes | memoryview]) -> None:
        """What one read of an owner's answer gave (proxy.relay), past what is parked for `conn`: parked when large,
        as a large hit is, else written now."""
        if sum(map(len, data)) >= PARK_BYTES:
            self.park_for(conn, data)
        elif conn.transport is not None:
            conn.transport.write(data[0]) if len(data) == 1 else conn.transport.writelines(data)

    def park_for(self, conn: FastPath, data: list[bytes | memoryview]) -> None:
        """Write `data` to `conn` when the loop's turn ends, after what is parked for it already (a relay's
        pieces of one answer as the owner's reads bring them: proxy.relay)."""
        transport: object = conn.transport
        if transport is None:
            return
        if type(transport) is Parked:
            transport.data.extend(data)
            return
        parked = Parked(conn, cast("asyncio.Transport", transport), data)
        conn.transport = cast("asyncio.Transport", parked)
        self.parked.append(parked)
        if len(self.parked) == 1:
            asyncio.get_running_loop().call_soon(self.release_parked)

    def release_parked(self) -> None:
        parked, self.parked = self.parked, []
        for p in parked:
            try:
                p.release()
            except Exception:  # a bug costs its own connection, never the answers parked after it
                log.exception("writing a parked answer failed: its connection is cut")
                p.real.abort()

    def way(self, conn: FastPath, p: Prepared) -> list[memoryview] | Way:
        """How FastPath._answer answers a hit: whole from memory (its parts: send() holds them here), or another
        way, which writes itself (what is held is written first). The one rule for both, so bytes stay in order."""
        if p.hit.parts is not None:
            way = MULTIPART
        elif len(p.slices) > HELD or (conn.tls and p.slices and p.hit.last - p.hit.first >= TLS_PIECE):
            way = STREAM
        else:
            parts = _from_memory(conn, p)
            if parts is not None:
                return parts
            way = DISK
        self.flush()
        return way


def _from_memory(conn: FastPath, p: Prepared) -> list[memoryview] | None:
    """A hit's parts from the memory tier, or None when a slice is not there (read from disk)."""
    if not p.slices:
        return [memoryview(p.hit.body)] if p.hit.body else []
    in_memory = conn.server.shared.engine.store.memory_slice
    parts: list[memoryview] = []
    for name, lo, hi in p.slices:
        data = in_memory(name)
        if data is None:
            return None
        parts.append(memoryview(data)[lo:hi])
    return parts


class Parked:
    """A connection's transport while its answers wait for the end of the loop's turn (Cork.park): whatever uses it
    first (Cork.release_parked, or any code asking the transport anything) has them written before it, once."""

    __slots__ = ("conn", "data", "real")

    def __init__(self, conn: FastPath, real: asyncio.Transport, data: list[bytes | memoryview]) -> None:
        self.conn, self.real, self.data = conn, real, data

    def release(self) -> asyncio.Transport:
        data, real = self.data, self.real
        if data:
            self.data = []
            current: object = self.conn.transport
            if current is self:
                self.conn.transport = real
            if not real.is_closing():  # the client went away meanwhile: nothing to write to
                real.writelines(data)
        return real

    def __getattr__(self, name: str) -> object:
        return getattr(self.release(), name)
