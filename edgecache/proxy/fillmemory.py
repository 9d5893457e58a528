"""The bytes a worker's fills may hold at once (cache.fill_memory), across every fill.

Each fill is bounded on its own (Fill.bound), but a worker runs as many fills as it has origin connections, and
256 cold misses of 4 MiB objects held a gigabyte. A fill takes what it will hold at most once its head is in
(Engine._reserve), before a byte of its body, and gives it back once its producer has ended and its disk writes
have landed: a slow disk then holds new fills back instead of piling up writes. A fill never waits for more while
it holds some, so fills cannot wait on each other; those waiting hold nothing but their origin connection, and
take their turn first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque

from edgecache import metrics
from edgecache.errors import Busy


class FillMemory:
    def __init__(self, limit: int, wait: float) -> None:
        self.limit = limit
        self.wait = wait  # seconds a fill waits for its share before its readers get 503
        self.held = 0
        self.peak = 0  # the most ever held: the bound's witness
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()
        metrics.FILL_MEMORY_LIMIT.set(limit)

    async def take(self, n: int) -> int:
        """Until `n` bytes (at most the whole budget) are the caller's; what was taken, for give(). Raises Busy
        when they are not within `wait` seconds."""
        n = min(n, self.limit)
        if n == 0 or (not self._queue and self.held + n <= self.limit):  # an empty body holds nothing: no turn
            self._grant(n)
            return n
        granted = asyncio.get_running_loop().create_future()
        self._queue.append((n, granted))
        metrics.FILL_MEMORY_WAITING.inc()
        try:
            async with asyncio.timeout(self.wait):
                await granted
        except TimeoutError:
            if not granted.done() or granted.cancelled():  # else granted in the turn the time ran out: taken
                metrics.FILL_MEMORY_WAITS.labels("timeout").inc()
                raise Busy(f"the worker's fills held their memory ({self.limit} bytes) for {self.wait:g} s") from None
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.give(n)  # granted in the same turn it was given up
            raise
        finally:
            metrics.FILL_MEMORY_WAITING.dec()
            self._next()  # one given up at the head no longer holds back those behind it
        metrics.FILL_MEMORY_WAITS.labels("granted").inc()
        return n

    def give(self, n: int) -> None:
        self.held -= n
        metrics.FILL_MEMORY_BYTES.dec(n)
        self._next()

    def _grant(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)
        metrics.FILL_MEMORY_BYTES.inc(n)

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

    @property
    def waiting(self) -> int:
        return sum(1 for _, granted in self._queue if not granted.done())
