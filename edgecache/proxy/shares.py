"""A site's share of an origin pool: no one site holds every connection a worker has to origins.

An origin that hangs, or trickles a byte at a time (aiohttp's read timeout restarts with each read), on as many
URLs of one site as a pool has connections took all of them, and every cold miss of every other site waited for
one until connect_timeout: a 504. So each site holds at most its share of each pool (nginx's `max_conns` on an
upstream server, Traffic Server's per_server.connection.max, Varnish's `.max_connections`); a request of a site
that holds its share waits for one of that site's own connections to come back, never for another site's, for at
most the time a pool wait has (origin.connect_timeout). How much a site may hold is `share`, and nowhere else.
"""

from __future__ import annotations

from edgecache import metrics
from edgecache.proxy.turns import Turns


def share(limit: int, sites: int, own: int | None) -> int:
    """The most connections of a pool of `limit` one site may hold: its own `origin_connections` if set, else all
    of them on a node of one site, else all but a quarter, which the other sites always have."""
    if own is not None:
        return min(own, limit)
    return limit if sites <= 1 else limit - limit // 4


class Shares:
    """The connections of one pool each site holds: a budget of the site's share, taken in turns (proxy.turns)."""

    def __init__(self) -> None:
        self._of: dict[str, Turns] = {}

    async def take(self, site: str, most: int, within: float) -> None:
        """One more connection for `site`, which may hold `most`; TimeoutError after `within` seconds. The site's
        own requests take their turns in the order they came."""
        if self.try_take(site, most):
            return
        metrics.ORIGIN_SHARE_WAITS.labels(site).inc()
        await self._of[site].wait_for(1, within)

    def try_take(self, site: str, most: int) -> bool:
        """One more connection for `site` now, if its share has room and none of its requests waits: whether taken."""
        return self._site(site, most).try_take(1)

    def give(self, site: str) -> None:
        """A connection of `site` came back (released, closed, or set aside)."""
        self._of[site].give(1)

    def add(self, site: str) -> None:
        """A connection set aside counts again, whether or not the site's share has room."""
        self._of[site].add(1)

    def _site(self, site: str, most: int) -> Turns:
        """The site's budget (one per site ever asked for: the sites are configured, so they are few)."""
        turns = self._of.get(site)
        if turns is None:
            turns = self._of[site] = Turns(most)
        turns.limit = most  # as the running config gives it
        return turns
