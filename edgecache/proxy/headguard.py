"""The request-head deadline for connections the fast path handed to aiohttp (slowloris, after the hand-off)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from edgecache import metrics

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HeadGuard(asyncio.Protocol):
    """In front of aiohttp's protocol once it has a connection: aiohttp bounds idle time between requests but
    not a head that trickles in, so this closes (408) a connection whose next head is not complete in time.

    It reads two of aiohttp's private attributes to know whether a request is queued or in progress; if a
    version renames them, the guard sees "busy" and stays out of the way (aiohttp's own limits still hold).
    """

    def __init__(self, inner: asyncio.Protocol, seconds: float, closed: Callable[[], None]) -> None:
        self.inner = inner
        self.closed = closed  # the fast path's open-connection count still includes this one
        self.seconds = seconds
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        if self._busy():
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        elif self.timer is None:  # part of a head, and nothing else going on: it has this long to end
            self.timer = asyncio.get_running_loop().call_later(self.seconds, self._expired)

    def _busy(self) -> bool:
        return bool(getattr(self.inner, "_request_in_progress", True) or getattr(self.inner, "_messages", True))

    def _expired(self) -> None:
        self.timer = None
        if self.transport is None or self._busy():
            return
        metrics.HEADER_TIMEOUTS.inc()
        self.transport.write(TIMEOUT_408)
        self.transport.close()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None
        self.closed()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
