"""Per-client request rate limits: a token bucket per address, in a bounded table. Pure: `now` is given.

An IPv6 client is its /64: that is the least a subscriber is given (RFC 6177, RIPE-690), and it picks any address
in it for each connection (RFC 8981), so a bucket per address would give one client 2**64 of them.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from ipaddress import IPv6Address, IPv6Network

from edgecache.core.admit import TOO_MANY, Reply

KEPT = 1024  # buckets held whether full or not (_forget_full)


@functools.lru_cache(maxsize=8192)  # asked on every request: an address is parsed once while its client is active
def bucket(client: str) -> str:
    """The bucket of a client address: an IPv6 address's /64, anything else (IPv4, '-') as it stands."""
    if ":" not in client:
        return client
    try:
        address = IPv6Address(client)
    except ValueError:
        return client
    if address.ipv4_mapped is not None:  # an IPv4 client written by a dual-stack hop: that one address
        return str(address.ipv4_mapped)
    return str(IPv6Network((address, 64), strict=False))


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = 100_000) -> None:
        self.rate = rate  # requests per second, sustained
        self.burst = burst  # requests allowed at once
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # bucket() -> (tokens, stamp)

    def allow(self, client: str, now: float) -> bool:
        client = bucket(client)
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        ok = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if ok else tokens, now)
        self._forget_full(now)
        return ok

    def _forget_full(self, now: float) -> None:
        """Past KEPT clients, drops the buckets that have filled up again, longest idle first: a client the table
        does not hold gets a full bucket, so such an entry decides nothing. The table then holds the clients of the
        last burst / rate seconds, not the last max_clients ever seen (20 MB a worker at 100,000, which the RSS
        bound takes from the memory tier). Below KEPT nothing is dropped, so a few busy clients cost no churn. Past
        max_clients, the longest idle client starts again with a full bucket."""
        buckets = self._buckets
        if len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        if len(buckets) <= KEPT:
            return
        while buckets:
            tokens, stamp = next(iter(buckets.values()))
            if tokens + (now - stamp) * self.rate < self.burst:
                return
            buckets.popitem(last=False)

    def refusal(self, client: str, now: float) -> Reply | None:
        """allow() as an answer: None, or the 429 whose Retry-After is when the client's bucket holds a token
        again at the sustained rate (rounded up, at least 1 s; RFC 9110 10.2.3)."""
        if self.allow(client, now):
            return None
        tokens, _ = self._buckets.get(bucket(client), (0.0, now))
        return Reply(TOO_MANY.status, TOO_MANY.reason, max(1, math.ceil((1.0 - tokens) / self.rate)))
