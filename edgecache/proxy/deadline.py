"""A connection's one deadline and the one timer that watches it (fastpath: a client must finish each request head
within header_timeout, and an idle keep-alive connection is closed after idle_timeout).

One timer serves every request of a connection: moving the deadline later only records it, and the timer re-arms
itself when it fires early, so a busy keep-alive connection creates no timer per request. What a passed deadline
means is the connection's to say (`passed`), and whether it still watches one at all (`watched`: open, not busy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_at", "_loop", "_passed", "_timer", "_timer_at", "_watched", "kind")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, watched: Callable[[], bool], passed: Callable[[str], None]
    ) -> None:
        self._loop = loop
        self._watched = watched
        self._passed = passed  # called with the kind of the deadline that passed
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = self._at = 0.0
        self.kind = ""  # "idle", "head", or "" for none

    def arm(self, kind: str, seconds: float) -> None:
        """Set the deadline: "idle" (between requests) or "head" (a head begun must end by then)."""
        if kind == "head" and self.kind == "head":
            return  # a head in progress keeps the deadline it started with
        self.kind = kind
        self._at = self._loop.time() + seconds
        if self._timer is None or self._timer_at > self._at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self._loop.call_at(self._at, self._tick), self._at

    def disarm(self) -> None:
        self.kind = ""  # the timer, if any, finds nothing to do when it fires

    def cancel(self) -> None:
        self.kind = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self.kind or not self._watched():
            return
        if self._loop.time() < self._at:
            self._timer, self._timer_at = self._loop.call_at(self._at, self._tick), self._at
            return
        self._passed(self.kind)
