"""Lingering close, as nginx's (lingering_close): a connection the node closes after its answer while the client
may still be sending (a 503 at the door, a refusal, a 408, Connection: close with requests pipelined behind it)
has its write side shut, and what comes after is read and dropped, until the client closes its side or a few
seconds pass. Closed at once, a socket with unread input makes the kernel send a reset, and a client that reads
after it sent loses the answer the reset overtakes (ECONNRESET instead of the 503).

Lingering is bounded: a pool holds at most `limit` connections, each for about `seconds` once its answer is out
(a client that does not take the answer has `write_timeout` per pause, as while it was served); past the limit a
connection closes at once, as before. TLS connections are not lingered here: their transport cannot shut its
write side alone, and its close already waits for the client's close_notify (ssl_shutdown_timeout).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, cast

from edgecache import metrics

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

SECONDS = 2.0  # nginx's lingering_time is 30 s, its lingering_timeout 5 s: an answer's reader closes sooner
LIMIT = 512  # connections lingering at once, per worker
FULL_SECONDS = 0.5  # the 503s of a full node: past max_connections already, so fewer, and shorter
FULL_LIMIT = 32


class Pool:
    """The connections lingering after their answers, at most `limit` of them."""

    def __init__(self, limit: int, seconds: float, write_timeout: float) -> None:
        self.limit, self.seconds, self.write_timeout = limit, seconds, write_timeout
        self.lingering: set[_Lingering] = set()

    def close(self, transport: asyncio.BaseTransport) -> bool:
        """Close `transport` once what was written to it is out, lingering if it can (True: it is this pool's now,
        with a protocol of its own); or at once (a full pool, TLS, a transport already closing)."""
        t = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        if len(self.lingering) >= self.limit or t.is_closing() or not t.can_write_eof():
            t.close()
            return False
        self.lingering.add(_Lingering(self, t))
        return True

    async def close_socket(self, sock: socket.socket) -> None:
        """close() for a socket no transport has yet (an answer sent on it by hand)."""
        if len(self.lingering) >= self.limit:
            sock.close()
            return
        try:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, sock)
        except OSError:
            sock.close()
            return
        self.close(transport)

    def close_all(self) -> None:
        """The node stops: no more lingering."""
        for each in list(self.lingering):
            each.transport.abort()


def close(conn: FastPath, pool: Pool | None = None) -> None:
    """Close a fast-path connection whose last answer is written: lingering (in the server's pool, or `pool`), it
    is gone from the fast path at once, as a closed one is (its seat let go, its timers cancelled)."""
    conn.closing = True
    transport = conn.transport
    if transport is not None and (pool or conn.server.lingering).close(transport):
        conn.connection_lost(None)


def close_idle(conn: FastPath) -> None:
    """Close a connection with nothing more to answer (idle past its time, or half-closed and answered). The last
    answer's bytes may still be going out under the transport's low mark, where no pause is told and so none is
    timed: a client that stopped taking them held the connection, and its place under max_connections, for ever,
    the close waiting for them. They have write_timeout to move, each time."""
    conn.closing = True
    transport = conn.transport
    if transport is None:
        return
    transport.close()
    if unsent := transport.get_write_buffer_size():
        seconds = conn.server.settings.write_timeout
        conn.loop.call_later(seconds, _moving, transport, unsent, seconds)


def _moving(transport: asyncio.Transport, before: int, seconds: float) -> None:
    unsent = transport.get_write_buffer_size()  # 0 once it is out, or gone
    if unsent == before:
        metrics.SLOW_CLIENTS.inc()
        transport.abort()
    elif unsent:
        asyncio.get_running_loop().call_later(seconds, _moving, transport, unsent, seconds)


class _Lingering(asyncio.Protocol):
    """A connection's protocol while it lingers: what comes is dropped; its end, or the time, closes it."""

    def __init__(self, pool: Pool, transport: asyncio.Transport) -> None:
        self.pool, self.transport = pool, transport
        self.loop = asyncio.get_running_loop()
        self.write_timer: asyncio.TimerHandle | None = None
        self.timer = self.loop.call_later(pool.seconds, self._expired)  # first: connection_lost may come at once
        transport.set_protocol(self)
        try:
            transport.write_eof()  # once what is buffered is out: the client reads the answer, then its end
        except OSError:  # the client reset it already (asyncio's loop raises ENOTCONN here): nothing to linger for
            transport.abort()
            return
        if not transport.is_reading():
            transport.resume_reading()
        if transport.get_write_buffer_size():  # it may be paused already, and never say so again
            self.pause_writing()
        self.unsent, self.moved = transport.get_write_buffer_size(), self.loop.time()  # what is left, since when

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None  # the client is done too: the transport closes

    def pause_writing(self) -> None:
        # The client is not taking the answer: it has write_timeout, as a served connection has (fastpath).
        if self.write_timer is not None:
            self.write_timer.cancel()
        self.write_timer = self.loop.call_later(self.pool.write_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _expired(self) -> None:
        unsent = self.transport.get_write_buffer_size()
        if not unsent:
            self.transport.close()
            return
        # The answer is still going out: the time counts from its end, while the client takes it. Under the low
        # mark the transport is not paused, and says nothing more: a client that stopped there is timed here.
        now = self.loop.time()
        if unsent != self.unsent:
            self.unsent, self.moved = unsent, now
        elif now - self.moved >= self.pool.write_timeout:
            self.transport.abort()
            return
        self.timer = self.loop.call_later(self.pool.seconds, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        if self.write_timer is not None:
            self.write_timer.cancel()
        self.pool.lingering.discard(self)
