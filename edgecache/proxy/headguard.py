"""What aiohttp's protocol lacks once the fast path handed it a connection: a deadline for each request head
(slowloris, after the hand-off), answers for a client that half-closed its side after its requests, and the way
back: once aiohttp has answered what it was handed, the next request's bytes go to the fast path again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler

from edgecache import metrics
from edgecache.core import closing
from edgecache.proxy import encode

_EOF_CHECK = 0.05  # after a half-close, how often to look whether aiohttp has answered everything


class HeadGuard(asyncio.Protocol):
    """In front of aiohttp's protocol once it has a connection: aiohttp bounds idle time between requests but
    not a head that trickles in, so this closes (408) a connection whose next head is not complete in time.

    It reads two of aiohttp's private attributes to know whether a request is queued or in progress; if a
    version renames them, the guard sees "busy" and stays out of the way (aiohttp's own limits still hold).
    """

    def __init__(
        self,
        inner: RequestHandler,
        seconds: float,
        closed: Callable[[], None],
        back: Callable[[asyncio.Transport, bytes], None] | None = None,
        first: bool = False,
    ) -> None:
        self.first = first  # the connection is new: its first head is timed from the connect (the admin listener's)
        self.inner = inner
        self.closed = closed  # the fast path's open-connection count still includes this one
        self.back = back  # gives the connection back to the fast path with the next request's first bytes
        self.seconds = seconds
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eof_timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        # What aiohttp was last fed ended a head: its parser holds no part of another (a chunk that ended at
        # a body's end or mid-head says nothing of the kind, so such a connection stays with aiohttp).
        self.clean = False
        self.scan = closing.START  # where its requests end, from the first byte it is given (a request's first)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)
        if self.first:
            self.timer = asyncio.get_running_loop().call_later(self.seconds, self._expired)

    def data_received(self, data: bytes) -> None:
        if self.back is not None and self._between_requests():
            self._give_back(data)
            return
        # Nothing after a request that closes the connection reaches aiohttp: its parser refused the whole read
        # for it, and the answers of the requests before were lost (core.closing).
        ends: list[int] = []
        self.scan, n = closing.scan(self.scan, data, ends)
        if n < len(data):
            data = data[:n]
            if not data:
                return
        self.clean = data.endswith(b"\r\n\r\n")
        self._feed(data, ends)
        if self._busy():
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        elif self.timer is None:  # part of a head, and nothing else going on: it has this long to end
            self.timer = asyncio.get_running_loop().call_later(self.seconds, self._expired)

    def _feed(self, data: bytes, ends: list[int]) -> None:
        """Give aiohttp each request that ends in `data` (where `ends` says) apart, the first MAX_MSG_QUEUE_SIZE
        of them: its parser refuses a whole read for a malformed request in it, and drops the requests before it
        from that read, whose answers were lost (the client got the 400 alone). Fed apart, they are queued before
        the refusal: answered in order, then the 400 with its reason, then the close. No more pieces than aiohttp
        queues requests: its queue stays bounded, whatever a read holds."""
        start = 0
        for end in ends[:MAX_MSG_QUEUE_SIZE]:
            if start < end < len(data):
                self.inner.data_received(data[start:end])
                start = end
        self.inner.data_received(data[start:] if start else data)

    def _between_requests(self) -> bool:
        """Has aiohttp answered everything and holds nothing of the next request: waiting for a head, with no
        part of one parsed, no body, no close pending, reading, and its answers taken by the client?"""
        inner, transport = self.inner, self.transport
        waiter = getattr(inner, "_waiter", None)
        return (
            transport is not None
            and self.clean
            and transport.is_reading()
            and isinstance(waiter, asyncio.Future)
            and not waiter.done()
            and self.timer is None  # no part of a head waits in aiohttp's parser
            and self.eof_timer is None
            and not self.write_paused
            and not self._busy()
            and getattr(inner, "_payload_parser", True) is None
            and not getattr(inner, "_close", True)
            and not getattr(inner, "_force_close", True)
            and not getattr(inner, "_upgraded", True)
        )

    def _give_back(self, data: bytes) -> None:
        """aiohttp lets go of the connection without closing it, and the fast path decides the next request."""
        transport, back = self.transport, self.back
        assert transport is not None
        assert back is not None
        self.transport = None
        self.inner.transport = None  # its close below must leave the socket open
        self.inner.connection_lost(None)
        self.closed()
        back(transport, data)

    def _busy(self) -> bool:
        return bool(getattr(self.inner, "_request_in_progress", True) or getattr(self.inner, "_messages", True))

    def _expired(self) -> None:
        self.timer = None
        if self.transport is None or self._busy():
            return
        metrics.HEADER_TIMEOUTS.inc()
        self.transport.write(encode.timed_out(formatdate(usegmt=True).encode()))
        self.transport.close()

    def eof_received(self) -> bool | None:
        # aiohttp ignores a half-close and returns None, which closes the socket before the requests already
        # received are answered; nginx answers them. Keep the socket open and close it once aiohttp is done. (A TLS
        # transport closes after a close_notify whatever this says, and logs a warning for each True: None there.)
        self._close_when_done()
        tls = self.transport is not None and self.transport.get_extra_info("sslcontext") is not None
        return None if tls else True

    def _close_when_done(self) -> None:
        """Close once aiohttp waits for a request that will never come (what its own keep-alive timeout closes);
        until then, look again every _EOF_CHECK seconds. aiohttp has no event for it, and its close() drops
        requests still queued behind the one in progress."""
        self.eof_timer = None
        if self.transport is None:
            return
        waiter = getattr(self.inner, "_waiter", None)
        if isinstance(waiter, asyncio.Future) and not waiter.done():
            self.inner.force_close()  # its answers already written still go out before the socket closes
        else:
            self.eof_timer = asyncio.get_running_loop().call_later(_EOF_CHECK, self._close_when_done)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.eof_timer is not None:
            self.eof_timer.cancel()
        self.transport = None
        self.closed()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        # What aiohttp was last fed ended a head: its parser holds no part of another (a chunk that ended at
        # a body's end or mid-head says nothing of the kind, so such a connection stays with aiohttp).
        self.clean = False
        self.inner.resume_writing()
