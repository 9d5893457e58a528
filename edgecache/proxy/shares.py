"""A site's share of an origin pool: no one site holds every connection a worker has to origins.

An origin that hangs, or trickles a byte at a time (aiohttp's read timeout restarts with each read), on as many
URLs of one site as a pool has connections took all of them, and every cold miss of every other site waited for
one until connect_timeout: a 504. So each site holds at most its share of each pool (nginx's `max_conns` on an
upstream server, Traffic Server's per_server.connection.max, Varnish's `.max_connections`); a request of a site
that holds its share waits for one of that site's own connections to come back, never for another site's, for at
most the time a pool wait has (origin.connect_timeout). The decision is `Shares.may_take`, and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict

from edgecache import metrics


def share(limit: int, sites: int, own: int | None) -> int:
    """The most connections of a pool of `limit` one site may hold: its own `origin_connections` if set, else all
    of them on a node of one site, else all but a quarter, which the other sites always have."""
    if own is not None:
        return min(own, limit)
    return limit if sites <= 1 else limit - limit // 4


class Shares:
    """The connections of one pool each site holds, and the requests of each site waiting for one of its own."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self._waiting: dict[str, OrderedDict[asyncio.Future[None], None]] = {}

    def may_take(self, site: str, most: int) -> bool:
        return self.held[site] < most

    async def take(self, site: str, most: int, within: float) -> None:
        """One more connection for `site`, which may hold `most`; TimeoutError after `within` seconds. The site's
        own requests take their turns in the order they came."""
        queue = self._waiting.get(site)
        if not queue and self.may_take(site, most):
            self.held[site] += 1
            return
        metrics.ORIGIN_SHARE_WAITS.labels(site).inc()
        queue = self._waiting.setdefault(site, OrderedDict())
        loop = asyncio.get_running_loop()
        again = False
        try:
            async with asyncio.timeout(within):
                while True:
                    waiter = loop.create_future()
                    queue[waiter] = None
                    if again:  # woken, and another took the connection first: keep its place at the front
                        queue.move_to_end(waiter, last=False)
                    try:
                        await waiter
                    finally:
                        queue.pop(waiter, None)
                    if self.may_take(site, most):
                        break
                    again = True
        except BaseException:
            self._wake(site)  # a turn it was given and cannot use goes to the next
            raise
        finally:
            if not queue and self._waiting.get(site) is queue:
                del self._waiting[site]
        self.held[site] += 1

    def give(self, site: str) -> None:
        """A connection of `site` came back (released, closed, or set aside)."""
        self.held[site] -= 1
        if self.held[site] <= 0:
            del self.held[site]
        self._wake(site)

    def add(self, site: str) -> None:
        """A connection set aside counts again, whether or not the site's share has room."""
        self.held[site] += 1

    def _wake(self, site: str) -> None:
        for waiter in self._waiting.get(site, ()):
            if not waiter.done():
                waiter.set_result(None)
                return
