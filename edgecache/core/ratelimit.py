"""Per-client request rate limits: a token bucket per address, in a bounded table. Pure: `now` is given."""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        self.rate = rate  # requests per second, sustained
        self.burst = burst  # requests allowed at once
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, stamp)

    def allow(self, client: str, now: float) -> bool:
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the longest idle client starts again with a full bucket
        return ok
