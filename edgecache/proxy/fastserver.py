"""What the fast path's connections share (fastpath.FastPath): the node's parts (proxy.shared), the decisions'
memo, aiohttp's protocol for the connections handed to it, pooled pread buffers, the turn for promoting a disk hit
to memory, the Date field, and who is connected, for a drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

from aiohttp.web_protocol import RequestHandler

from edgecache import metrics
from edgecache.proxy import linger
from edgecache.proxy.cork import Cork
from edgecache.proxy.decide import MEMO_BYTES, Decider
from edgecache.proxy.fastpath import PIECE, FastPath
from edgecache.proxy.fill import Adopted
from edgecache.proxy.peerpool import PeerPool
from edgecache.proxy.shared import Shared

if TYPE_CHECKING:
    from edgecache.proxy.tlsdoor import TLSDoor

_TAKEN_BACK = metrics.FAST_PATH.labels("taken_back")
PROMOTE_SECONDS = 0.02  # at most one disk hit offered to the memory tier per this long, per worker
_BUFFERS_KEPT = 8


@dataclass(frozen=True, slots=True)
class FastSettings:
    """Read once, when the FastServer is built (its lingering pools are sized from it): a restart changes them."""

    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    write_timeout: float = 60.0
    sendfile: bool = False  # disk hits: os.sendfile onto the socket (may block on cold pages) instead of pread
    max_connections: int = 20_000  # open client connections per worker; past it, new ones get 503 and close
    answers: bool = True  # off (server.fast_path = false): a PROXY listener's connection is handed over at once
    memo_bytes: int = MEMO_BYTES  # what the decisions' memos hold together at most (config.CacheSettings.memo_bytes)
    lingering: int = linger.LIMIT  # connections lingering after their answers at most (fewer: few descriptors)
    full_lingering: int = linger.FULL_LIMIT  # and after the 503 past max_connections


@dataclass(slots=True)
class FastServer:
    """What the connections share: the node's parts (proxy.shared), aiohttp's protocol factory, and who is
    connected (for drain)."""

    shared: Shared
    fallback: Callable[[], RequestHandler]
    settings: FastSettings
    connections: set[FastPath] = field(default_factory=set)
    handed: set[asyncio.Transport] = field(default_factory=set)  # connections aiohttp has, until they close
    handshaking: set[TLSDoor] = field(default_factory=set)  # HTTPS connections in their handshake
    open: int = 0  # client connections open, on the fast path or handed to aiohttp
    empty: asyncio.Event = field(default_factory=asyncio.Event)
    _date: tuple[int, bytes] = (0, b"")
    # pread buffers the socket took in full, for the next disk hit: fresh memory costs a page fault per 4 KiB
    # (about 0.5 ms per MiB on a VM), and a new buffer per response was most of a disk hit's RSS churn.
    _buffers: list[bytearray] = field(default_factory=list)
    _promote_at: float = 0.0
    stopping: bool = False  # shutdown() began: no connection comes back from aiohttp (take_back)
    decider: Decider = field(init=False)
    lingering: linger.Pool = field(init=False)  # connections closed after their answers, input still read (linger)
    full: linger.Pool = field(init=False)  # those of the 503 past max_connections: fewer, for less time
    _peers: PeerPool | None = None
    cork: Cork = field(default_factory=Cork)  # the answers to one read's heads, written together (proxy.cork)

    def __post_init__(self) -> None:
        self.decider = Decider(self.shared, self.date, self.settings.memo_bytes)
        s = self.settings
        self.lingering = linger.Pool(s.lingering, linger.SECONDS, s.write_timeout)
        self.full = linger.Pool(s.full_lingering, linger.FULL_SECONDS, s.write_timeout)

    def peers(self) -> PeerPool:
        """Connections to the cluster's other nodes, for the requests this worker forwards (proxy.relay)."""
        if self._peers is None:
            o = self.shared.engine.origin.settings
            self._peers = PeerPool(o.max_connections, o.connect_timeout, o.read_timeout)
        return self._peers

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
        (RWF_NOWAIT: never waits on the disk); the buffer and how many bytes it got (0: none cached, a
        filesystem such as tmpfs that refuses RWF_NOWAIT, or a read error: the caller then reads off the loop)."""
        buf = self._buffers.pop() if self._buffers else bytearray(PIECE)
        try:
            return buf, os.preadv(fd, [memoryview(buf)[:n]], offset, os.RWF_NOWAIT)
        except OSError:
            # Not cached (EAGAIN), RWF_NOWAIT refused (tmpfs: EOPNOTSUPP), or the disk failing (EIO): the caller
            # reads off the loop, where a failure is met by fetching the bytes instead (diskhit).
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

    def hand_over(
        self,
        transport: asyncio.BaseTransport,
        declared: str | None,
        adopted: Adopted | None = None,
        admitted: str | None = None,
    ) -> Callable[[], None]:
        """What aiohttp's side calls when a connection handed to it closes. The client its PROXY header declared
        is kept for the handler (Shared.declared) until then, and the fill its first request started, until
        the handler takes it over (Shared.adopted); the connection is known to shutdown()."""
        self.handed.add(cast(asyncio.Transport, transport))  # uvloop's transports are not its subclasses
        if declared is not None:
            self.shared.declared[transport] = declared
        if adopted is not None:
            self.shared.adopted[transport] = adopted
        if admitted is not None:
            self.shared.admitted[transport] = admitted

        def closed() -> None:
            if transport in self.handed:
                self.handed.discard(transport)
                self.shared.declared.pop(transport, None)
                self.shared.admitted.pop(transport, None)
                left = self.shared.adopted.pop(transport, None)
                if left is not None:  # never taken over: nobody reads it
                    left.let_go()
                self.open -= 1  # it no longer counts against max_connections
                self._none_left()

        return closed

    def take_back(self, transport: asyncio.Transport, declared: str | None, data: bytes) -> None:
        """A connection aiohttp has answered every request of: the fast path decides the next one (HeadGuard).
        Not once the server is stopping: its connections were already told to close, and one taken now would
        outlive them; it closes, as aiohttp closes an idle connection when it stops."""
        if self.stopping:
            transport.close()
            return
        _TAKEN_BACK.inc()
        proto = FastPath(self)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if proto.transport is not None:  # not refused at the door (max_connections)
            proto.taken_back(declared, data)

    def sample(self) -> None:
        """The load gauges: the very counts and limits the door (max_connections) and Shared.overloaded
        (max_requests) judge, so /metrics shows what they see. Read, never counted again: no cost per request."""
        metrics.CLIENT_CONNECTIONS.set(self.open)
        metrics.CLIENT_CONNECTIONS_LIMIT.set(self.settings.max_connections)
        metrics.REQUESTS_IN_FLIGHT.set(self.shared.in_flight)
        metrics.REQUESTS_IN_FLIGHT_LIMIT.set(self.shared.max_in_flight)  # a reload changes it

    async def sample_every(self, seconds: float) -> None:
        """sample() now and every `seconds` (cache.stats_interval, as the tiers' gauges), until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(seconds)

    def gone(self, conn: FastPath) -> None:
        self.connections.discard(conn)
        self._none_left()

    def _none_left(self) -> None:
        if not (self.connections or self.handed):
            self.empty.set()

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now; give the ones mid-response, here or with aiohttp, up to `grace` seconds."""
        self.stopping = True
        doors = list(self.handshaking)  # no request yet: cut, and waited for (the loop closes their sockets)
        for door in doors:
            door.cut()
        if tasks := [d.done for d in doors if d.done is not None]:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            conn.close_when_idle()
        if self.connections or self.handed:
            self.empty.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.empty.wait()
        for conn in list(self.connections):
            conn.abort()
        # A connection handed to aiohttp once its server had stopped (a keep-alive client's request during the
        # drain) is known to no one else: left open, it would outlive the node.
        for transport in list(self.handed):
            if transport.get_write_buffer_size():
                transport.abort()  # what is still to be written would hold it open for as long as the client likes
            else:
                transport.close()
        self.lingering.close_all()
        self.full.close_all()
        if self._peers is not None:
            self._peers.close()
        await asyncio.sleep(0)  # a closed transport lets go of its socket on the loop's next turn
