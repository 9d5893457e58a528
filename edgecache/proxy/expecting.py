"""The requests that joined a fill (or started it) and are still to read it.

Between a request's join and its first read there are awaits (the fill's head, a lookup, a task to start, a hand-over
to the full handler). A fill that counted only those reading ended, meanwhile, as if nobody would (Engine.unread: a
copy with no validator is never completed by another fetch, so the request's answer was cut after its first slice),
and let go of the first slices of a body of unknown length that request was to stream. Each such request is counted
from its join until it reads, or leaves: release(), or dropped with whatever of the request held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable


class Expected:
    """One request still to read its fill: it holds this until it reads (release), or leaves."""

    __slots__ = ("__weakref__", "_of", "_ref")

    def __init__(self, of: Expecting) -> None:
        self._of: Expecting | None = of
        self._ref = weakref.ref(self, of.dropped)

    def release(self) -> None:
        """It reads now, or never will: the fill counts it no more."""
        if self._of is not None:
            of, self._of = self._of, None
            of.released(self._ref)


class Expecting:
    """A fill's requests still to read it; true while there is one. `wake`: the fill's, to tell its producer
    (waiting for room a stream still to come held) when one goes."""

    __slots__ = ("_loop", "_refs", "_wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self._refs: set[weakref.ref[Expected]] = set()
        self._wake = weakref.WeakMethod(wake)  # not the fill itself: a fill let go is freed at once, as before
        self._loop = asyncio.get_running_loop()

    def __bool__(self) -> bool:
        return bool(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def expect(self) -> Expected:
        one = Expected(self)
        self._refs.add(one._ref)
        return one

    def released(self, ref: weakref.ref[Expected]) -> None:
        if ref in self._refs:
            self._refs.discard(ref)
            self._woken()

    def dropped(self, ref: weakref.ref[Expected]) -> None:
        """A request dropped without a word (its state gone with it): maybe in the garbage collector's run in another
        thread, so the producer is woken on its own loop."""
        if ref in self._refs:
            self._refs.discard(ref)
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        if (wake := self._wake()) is not None:
            wake()
