"""The bandwidth cap of a prefetch job (admin.jobs)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Bytes per second, with a burst of one second's worth."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n or self.tokens >= self.rate:
                self.tokens -= n
                return
            await asyncio.sleep((min(n, self.rate) - self.tokens) / self.rate)
