"""Prometheus counters and histograms whose increments are summed over one turn of the event loop and applied at
the start of the next.

A prometheus_client child takes a lock on every increment (about 0.6 µs; an observation of a histogram 1.2 µs),
and a request answered from memory makes five to ten of them: a fifth of what a 4 KiB hit costs. Under load one
turn of the loop answers many requests, which increment the same few children: here each increment is an
addition to a Python number, and the sum reaches the child once per turn. The exposition lags by at most one turn
(exposition() in this process applies what is pending first). The children an answer updates together are one
TurnBundle, one call (the fast path's hits: proxy.observe.Tally).

An increment made where no event loop runs (a disk thread) goes to the child at once. One loop at a time batches:
another that starts (a test's) applies what the first left. Uses a histogram's `_upper_bounds`, `_sum` and `_buckets`
(prometheus_client's own, pinned in pyproject.toml): tests/unit/test_metricturn.py compares the exposition with
direct observations.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)
_get_loop = asyncio._get_running_loop  # None where no loop runs: C, no exception
_thread = threading.get_ident


class _Turn:
    """The children with increments pending, and the loop whose next turn applies them."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0  # the thread that runs it
        self.dirty: list[_Turned] = []

    def switch(self, loop: asyncio.AbstractEventLoop) -> None:
        apply()  # another loop's leftovers: its next turn may never come
        self.loop, self.thread = loop, _thread()

    def here(self) -> bool:
        """Whether the loop running here is the one whose turn batches, as `_get_loop() is self.loop` says but
        without its cost: CPython 3.11 asks the kernel for the process id on every _get_running_loop (0.4 µs on
        the 2-core VM, against 0.1 for this), and a hit makes five increments. A loop runs on one thread at a
        time, and a thread runs one loop at a time."""
        loop = self.loop
        return loop is not None and _thread() == self.thread and loop.is_running()

    def add(self, child: _Turned) -> None:
        if not self.dirty:
            assert self.loop is not None
            self.loop.call_soon(apply)
        self.dirty.append(child)


_TURN = _Turn()


def apply() -> None:
    """Apply every pending increment to its child. One that fails is logged: the others are applied all the same
    (a child left marked pending but in no list would never count again)."""
    dirty, _TURN.dirty = _TURN.dirty, []
    for child in dirty:
        try:
            child.apply()
        except Exception:
            log.exception("a metric's increments could not be applied")


class _Turned:
    """A metric (or one of its children) whose increments on the loop are applied once per turn."""

    __slots__ = ("_children", "_dirty", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}
        self._dirty = False

    @property
    def wrapped(self) -> Any:
        """The prometheus_client metric (or child) increments reach, what is pending applied first."""
        apply()
        return self._metric

    def _labelled(self, values: tuple[str, ...]) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = type(self)(self._metric.labels(*values))
        return child

    def _batched(self) -> bool:
        """Whether this increment is summed for the next turn (else the caller applies it at once: no loop)."""
        if not _TURN.here():
            loop = _get_loop()
            if loop is None:
                return False
            _TURN.switch(loop)
        if not self._dirty:
            self._dirty = True
            _TURN.add(self)
        return True

    def apply(self) -> None:
        raise NotImplementedError


class TurnCounter(_Turned):
    """A Counter (or one of its children) whose increments on the loop are applied once per turn."""

    __slots__ = ("_pending",)

    def __init__(self, metric: Counter) -> None:
        super().__init__(metric)
        self._pending = 0.0

    def labels(self, *values: str) -> TurnCounter:
        child: TurnCounter = self._labelled(values)
        return child

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        # Once more this turn (the common case, kept short), or the first time.
        if (self._dirty and _TURN.here()) or self._batched():
            self._pending += amount
        else:
            self._metric.inc(amount)

    def apply(self) -> None:
        amount, self._pending, self._dirty = self._pending, 0.0, False
        if amount:
            self._metric.inc(amount)


class TurnHistogram(_Turned):
    """A Histogram (or one of its children) whose observations on the loop are applied once per turn."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, metric: Histogram) -> None:
        super().__init__(metric)
        self._bounds: tuple[float, ...] = tuple(metric._upper_bounds)  # +Inf last
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def labels(self, *values: str) -> TurnHistogram:
        child: TurnHistogram = self._labelled(values)
        return child

    def observe(self, amount: float) -> None:
        if not (self._dirty and _TURN.here()) and not self._batched():
            self._metric.observe(amount)
            return
        if amount == amount:  # NaN is in no bucket of the client's (amount <= bound is false), only in the sum
            self._counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount, as the client's
        self._sum += amount

    def apply(self) -> None:
        counts, total = self._counts, self._sum
        self._counts, self._sum, self._dirty = [0] * len(counts), 0.0, False
        _observed(self._metric, counts, total)


def _observed(child: Any, counts: list[int], total: float) -> None:
    """Add observations (their count per bucket, and their sum) to a histogram's child."""
    child._sum.inc(total)
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)


class TurnBundle(_Turned):
    """The children one answer updates together, in one call: `ones` each counted once, `histogram` observed, and
    the two `amounts` children each given its own amount.

    A hit from memory made five increments (the fast path's answers, requests, time to first byte, site bytes,
    bytes from memory), each a call that looked at the turn (0.2-0.4 µs each, of an 8.5 µs answer). A bundle is
    resolved once per set of label values and looks once; its sums reach each child at the next turn, as the
    children's own increments would (tests/unit/test_metricturn.py compares the exposition)."""

    __slots__ = ("_amounts", "_bounds", "_counts", "_first", "_n", "_ones", "_second", "_sum")

    def __init__(
        self, ones: tuple[TurnCounter, ...], histogram: TurnHistogram, amounts: tuple[TurnCounter, TurnCounter]
    ) -> None:
        super().__init__(histogram._metric)
        self._ones: tuple[Any, ...] = tuple(c._metric for c in ones)
        self._amounts: tuple[Any, ...] = tuple(c._metric for c in amounts)
        self._bounds = histogram._bounds
        self._counts = [0] * len(self._bounds)
        self._n = 0
        self._sum = self._first = self._second = 0.0

    def add(self, seconds: float, first: float, second: float) -> None:
        """One answer: each of `ones` once, `seconds` observed, `first` and `second` to the two amounts."""
        if first < 0 or second < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if not (self._dirty and _TURN.here()) and not self._batched():
            for child in self._ones:
                child.inc()
            self._metric.observe(seconds)
            self._amounts[0].inc(first)
            self._amounts[1].inc(second)
            return
        self._n += 1
        if seconds == seconds:  # NaN: in no bucket, as TurnHistogram.observe
            self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        self._first += first
        self._second += second

    def apply(self) -> None:
        n, counts, total, first, second = self._n, self._counts, self._sum, self._first, self._second
        self._n, self._counts, self._dirty = 0, [0] * len(counts), False
        self._sum = self._first = self._second = 0.0
        if not n:
            return
        for child in self._ones:
            child.inc(n)
        _observed(self._metric, counts, total)
        if first:
            self._amounts[0].inc(first)
        if second:
            self._amounts[1].inc(second)
