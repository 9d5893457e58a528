"""What the fast path's connections share (fastpath.FastPath): the handler and the decisions' memo, aiohttp's
protocol for the connections handed to it, pooled pread buffers, the turn for promoting a disk hit to memory,
the Date field, and who is connected, for a drain."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from aiohttp.web_protocol import RequestHandler

from edgecache.proxy.decide import Decider
from edgecache.proxy.fastpath import PIECE, FastPath
from edgecache.proxy.handler import EdgeHandler

PROMOTE_SECONDS = 0.02  # at most one disk hit offered to the memory tier per this long, per worker
_BUFFERS_KEPT = 8


@dataclass(slots=True)
class FastSettings:
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    write_timeout: float = 60.0
    sendfile: bool = False  # disk hits: os.sendfile onto the socket (may block on cold pages) instead of pread
    max_connections: int = 20_000  # open client connections per worker; past it, new ones get 503 and close
    answers: bool = True  # off (server.fast_path = false): a PROXY listener's connection is handed over at once


@dataclass(slots=True)
class FastServer:
    """What the connections share: the handler, aiohttp's protocol factory, and who is connected (for drain)."""

    handler: EdgeHandler
    fallback: Callable[[], RequestHandler]
    settings: FastSettings
    connections: set[FastPath] = field(default_factory=set)
    open: int = 0  # client connections open, on the fast path or handed to aiohttp
    empty: asyncio.Event = field(default_factory=asyncio.Event)
    _date: tuple[int, bytes] = (0, b"")
    # pread buffers the socket took in full, for the next disk hit: fresh memory costs a page fault per 4 KiB
    # (about 0.5 ms per MiB on a VM), and a new buffer per response was most of a disk hit's RSS churn.
    _buffers: list[bytearray] = field(default_factory=list)
    _promote_at: float = 0.0
    decider: Decider = field(init=False)

    def __post_init__(self) -> None:
        self.decider = Decider(self.handler, self.date)

    def promote_due(self, now: float) -> bool:
        """Whether may_promote() would say yes now (without taking the turn)."""
        return now >= self._promote_at

    def may_promote(self, now: float) -> bool:
        """Whether a disk hit may be read whole and offered to the memory tier now (a few per second at most).

        Without this, a hot object evicted from memory by a scan stayed on disk for good: the fast path sends
        disk hits in pieces and never held the whole slice. Reading it whole costs a thread hop and a fresh
        slice of memory, so only one is offered every PROMOTE_SECONDS; what stays is the tier's policy's call.
        """
        if now < self._promote_at:
            return False
        self._promote_at = now + PROMOTE_SECONDS
        return True

    def read_cached(self, fd: int, offset: int, n: int) -> tuple[bytearray, int]:
        """Up to n (<= PIECE) bytes at `offset` into a pooled buffer, only as far as they are in the page cache
        (RWF_NOWAIT: never waits on the disk); the buffer and how many bytes it got (0: none cached, or a
        filesystem such as tmpfs that refuses RWF_NOWAIT: the caller then reads off the loop)."""
        buf = self._buffers.pop() if self._buffers else bytearray(PIECE)
        try:
            return buf, os.preadv(fd, [memoryview(buf)[:n]], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return buf, 0
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            return buf, 0

    def give_back(self, buf: bytearray) -> None:
        if len(self._buffers) < _BUFFERS_KEPT:
            self._buffers.append(buf)

    def date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def protocol(self) -> FastPath:
        return FastPath(self)

    def proxy_protocol(self) -> FastPath:
        """The protocol of a listener whose connections start with a PROXY header (server.proxy_protocol)."""
        return FastPath(self, proxy=True)

    def hand_over(self, transport: asyncio.BaseTransport, declared: str | None) -> Callable[[], None]:
        """What aiohttp's side calls when a connection handed to it closes. The client its PROXY header declared
        is kept for the handler (EdgeHandler.declared) until then."""
        if declared is None:
            return self.connection_closed
        self.handler.declared[transport] = declared

        def closed() -> None:
            self.handler.declared.pop(transport, None)
            self.connection_closed()

        return closed

    def connection_closed(self) -> None:
        """A connection handed to aiohttp is gone: it no longer counts against max_connections."""
        self.open -= 1

    def gone(self, conn: FastPath) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.empty.set()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; give the ones mid-response up to `grace` seconds to finish."""
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections:
            self.empty.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.empty.wait()
        for conn in list(self.connections):
            conn.abort()
