"""A budget taken in turns: what a fill's memory (proxy.fillmemory) and a site's share of an origin or peer pool
(proxy.shares) are both made of.

Waiters are served first come, first served, each granted in the turn something is given back, so a newcomer never
takes what a waiter was owed, and one that gives up (its time ran out, its task was cancelled) in the turn it was
granted gives it back.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most ever held: a bound's witness
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_take(self, n: int) -> bool:
        """`n` now, if they fit and nobody waits: whether taken."""
        if self._queue or self.held + n > self.limit:
            return False
        self._grant(n)
        return True

    async def wait_for(self, n: int, within: float) -> None:
        """Until `n` are the caller's, in its turn; TimeoutError after `within` seconds, nothing taken."""
        granted = asyncio.get_running_loop().create_future()
        self._queue.append((n, granted))
        try:
            async with asyncio.timeout(within):
                await granted
        except TimeoutError:
            if not granted.done() or granted.cancelled():  # else granted in the turn the time ran out: taken
                raise
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.give(n)  # granted in the same turn it was given up
            raise
        finally:
            self._next()  # one given up at the head no longer holds back those behind it

    def give(self, n: int) -> None:
        self._moved(-n)
        self._next()

    def add(self, n: int) -> None:
        """`n` held again that were given back meanwhile (a connection set aside counts again), whether or not they
        fit: the next turns wait until as much is given back."""
        self._moved(n)

    @property
    def waiting(self) -> int:
        return sum(1 for _, granted in self._queue if not granted.done())

    def _grant(self, n: int) -> None:
        self._moved(n)
        self.peak = max(self.peak, self.held)

    def _moved(self, n: int) -> None:
        self.held += n

    def _next(self) -> None:
        while self._queue:
            n, granted = self._queue[0]
            if granted.done():  # given up (timed out, cancelled)
                self._queue.popleft()
                continue
            if self.held + n > self.limit:
                return
            self._queue.popleft()
            self._grant(n)
            granted.set_result(None)
