"""Hot objects spread: which objects a node that does not own them keeps a copy of, in memory.

One viral object would otherwise load its owner alone: every node forwards every request for it there. A node
that sees the same object asked THRESHOLD times within WINDOW seconds takes it as hot: it fills a copy from the
owner into its memory tier and answers it itself (proxy.handler), for as long as the requests keep coming (each
one extends the window). The table of counts is bounded (CAPACITY keys and BYTES by their length, the least
recently asked dropped first), so a scan of many objects, however long their URLs, costs a fixed amount of memory
and never makes anything hot.

Pure: `now` is a parameter.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edgecache.core.cachecontrol import parse_cache_control, parse_pragma_no_cache
from edgecache.core.conditional import validates
from edgecache.core.forward import must_pass
from edgecache.core.headers import Headers

# Requests within WINDOW that make an object hot on a node that does not own it: 3.2 a second, at one node, for
# one object. An object asked less often costs its owner little; a viral one is asked hundreds of times a second.
THRESHOLD = 32
WINDOW = 10.0  # seconds
CAPACITY = 4096  # keys counted at once
# And the bytes they hold: a key's length + ENTRY_BYTES (its entry, its count and the str's header, measured with
# tracemalloc: 178). 4,096 keys of 330 characters fit, 260 of 8,000: by count alone, one client asking distinct
# URLs of 8,000 bytes that another node owns took a worker 34 MiB over its budget.
BYTES = 2 * 2**20
ENTRY_BYTES = 180


@dataclass(slots=True)
class _Count:
    start: float  # when this window's first request came
    count: int
    hot_until: float  # hot while requests keep coming: each one pushes this on by WINDOW


class Gate:
    def __init__(
        self, threshold: int = THRESHOLD, window: float = WINDOW, capacity: int = CAPACITY, budget: int = BYTES
    ) -> None:
        self.threshold, self.window, self.capacity, self.budget = threshold, window, capacity, budget
        self._counts: OrderedDict[str, _Count] = OrderedDict()
        self.bytes = 0  # what the keys counted hold (ENTRY_BYTES each besides their length)

    def __len__(self) -> int:
        return len(self._counts)

    def asked(self, key: str, now: float) -> bool:
        """Count a request for `key`; whether the object is hot now (this request included)."""
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = _Count(now, 0, 0.0)
            self.bytes += len(key) + ENTRY_BYTES
            while len(self._counts) > self.capacity or self.bytes > self.budget:
                dropped, _ = self._counts.popitem(last=False)
                self.bytes -= len(dropped) + ENTRY_BYTES
        else:
            self._counts.move_to_end(key)
        if now < c.hot_until:
            c.hot_until = now + self.window
            return True
        if now - c.start > self.window:
            c.start, c.count = now, 0
        c.count += 1
        if c.count >= self.threshold:
            c.hot_until = now + self.window
            return True
        return False

    def hot(self, key: str, now: float) -> bool:
        """Whether `key` is hot now, without counting a request: asked() counted the one this is for."""
        c = self._counts.get(key)
        return c is not None and now < c.hot_until


def spreadable(headers: Headers) -> bool:
    """Whether a GET or HEAD without a body counts towards its object's heat: only a plain cacheable one. A
    conditional or no-store request, or one with credentials, is always its owner's to answer; so is one that asks
    for the origin's validation (no-cache, max-age=0, Pragma: no-cache): a copy here would be revalidated with the
    owner's cache, and the origin never asked (RFC 9111 5.2.1.4)."""
    if validates(headers):
        return False
    cc = parse_cache_control(headers)
    if cc.no_cache or cc.max_age == 0 or parse_pragma_no_cache(headers):
        return False
    return not cc.no_store and must_pass(headers) is None
