"""The bytes a worker's fills may hold at once (cache.fill_memory), across every fill.

Each fill is bounded on its own (Fill.bound), but a worker runs as many fills as it has origin connections, and
256 cold misses of 4 MiB objects held a gigabyte. A fill takes what it will hold at most once its head is in
(FillBudget.take), before a byte of its body is read. A fill never waits for more while it holds some, so fills
cannot wait on each other; those waiting hold nothing but their origin connection, and take their turn first
come, first served.

Two pools, so that no client can hold back the fills of cacheable objects: a fill that may be shared (it is
stored) gives its share back once its producer has ended and its disk writes have landed (a slow disk holds new
fills back instead of piling up writes), and lets go of its slices then, so that readers still on them read them
from the store; it never waits on a client. A fill of a private answer is paced by its one client, who may read
as slowly as it likes: it takes from a quarter of the budget kept for such fills, reads ahead of its client by
two slices at most, and gives its share back once that client has done.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from edgecache import metrics
from edgecache.errors import Busy
from edgecache.proxy.fill import PRIVATE_WINDOW, UNKNOWN_WINDOW, Fill, FillHead
from edgecache.proxy.turns import Turns


class FillMemory(Turns):
    """One pool: a byte budget taken in turns (proxy.turns), with its metrics."""

    def __init__(self, limit: int, wait: float, name: str = "shared") -> None:
        super().__init__(limit)
        self.wait = wait  # seconds a fill waits for its share before its readers get 503
        self._held = metrics.FILL_MEMORY_BYTES.labels(name)
        self._waiting = metrics.FILL_MEMORY_WAITING.labels(name)
        self._granted = metrics.FILL_MEMORY_WAITS.labels(name, "granted")
        self._timeouts = metrics.FILL_MEMORY_WAITS.labels(name, "timeout")
        metrics.FILL_MEMORY_LIMIT.labels(name).set(limit)

    async def take(self, n: int) -> int:
        """Until `n` bytes (at most the whole budget) are the caller's; what was taken, for give(). Raises Busy
        when they are not within `wait` seconds."""
        n = min(n, self.limit)
        if n == 0 or self.try_take(n):  # an empty body holds nothing: no turn
            return n
        self._waiting.inc()
        try:
            await self.wait_for(n, self.wait)
        except TimeoutError:
            self._timeouts.inc()
            raise Busy(f"the worker's fills held their memory ({self.limit} bytes) for {self.wait:g} s") from None
        finally:
            self._waiting.dec()
        self._granted.inc()
        return n

    def _moved(self, n: int) -> None:
        super()._moved(n)
        self._held.inc(n)


@dataclass(frozen=True, slots=True)
class Taken:
    pool: FillMemory
    n: int


class FillBudget:
    """The pools of cache.fill_memory: three quarters for fills that may be shared, a quarter for private ones."""

    def __init__(self, limit: int, wait: float) -> None:
        paced = limit // 4
        self.shared = FillMemory(limit - paced, wait, "shared")
        self.paced = FillMemory(paced, wait, "paced")

    async def take(self, fill: Fill, head: FillHead) -> Taken:
        """The fill's share, from its pool, for what it will hold with this head (Fill.held_at_most)."""
        if not head.store:  # paced by its readers: a private answer's one, or the slowest of one too large to store
            fill.window = PRIVATE_WINDOW
        elif head.end is None:
            fill.window = UNKNOWN_WINDOW
            fill.grow = functools.partial(self.shared.try_take, fill.slice_size)  # for a stream behind (Fill._widen)
        pool = self.shared if head.store else self.paced
        return Taken(pool, await pool.take(fill.held_at_most(head)))

    def give_back(self, taken: Taken, fill: Fill, writes: list[asyncio.Task[None]]) -> Coroutine[Any, Any, None] | None:
        """Give the fill's share back once its producer has ended (the caller's turn), its disk writes have landed,
        and, for a private fill, its client has done: now, or the coroutine to run that waits for them."""
        pending = [w for w in writes if not w.done()]
        if pending or (taken.pool is self.paced and fill.readers):
            return self._give_after(taken, fill, pending)
        self._give(taken, fill)
        return None

    async def _give_after(self, taken: Taken, fill: Fill, writes: list[asyncio.Task[None]]) -> None:
        try:
            if writes:
                await asyncio.wait(writes)
            if taken.pool is self.paced:
                await fill.idle()
        finally:
            self._give(taken, fill)

    def _give(self, taken: Taken, fill: Fill) -> None:
        if taken.pool is self.shared:
            fill.let_go()
        fill.grow = None
        taken.pool.give(taken.n + fill.grown)
        fill.grown = 0
