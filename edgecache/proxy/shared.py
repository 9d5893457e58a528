"""What every request path of a worker shares: the sites, the engine, the cluster view, the access log, the limits
that admit a request, and the connections the fast path handed to the full handler.

The fast path (proxy.fastpath and the modules it drives) and the full handler (proxy.handler) each take this, so
neither reaches into the other for its parts: the fast path does not import the handler.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from edgecache import metrics
from edgecache.accesslog import AccessLog
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import keys, popularity
from edgecache.core.clientaddr import Networks
from edgecache.core.ratelimit import RateLimiter
from edgecache.core.route import Router
from edgecache.proxy import owner
from edgecache.proxy.engine import Engine
from edgecache.proxy.fill import Adopted


class Shared:
    def __init__(
        self,
        sites: tuple[Site, ...],
        engine: Engine,
        access: AccessLog | None = None,
        cluster: ClusterView | None = None,
    ) -> None:
        self.router: Router[Site] = Router((s.hosts, s) for s in sites)
        _series(sites)
        self.engine = engine
        self.access = access or AccessLog(None)
        self.access.never = _never_logged(sites)
        self.cluster = cluster
        if cluster is not None and engine is not None:  # `edgecache ring` builds one without an engine
            engine.cluster = cluster  # an owner's miss asks the previous owner's cache first (core.lookaside)
        # The access log's node: the cluster's name for this node, else the machine's.
        self.node = cluster.self_id if cluster is not None else socket.gethostname()
        self.write_timeout = 60.0
        self.max_in_flight = 10_000  # per worker; past it, new requests get 503 + Retry-After at once
        self.in_flight = 0
        self.limiter: RateLimiter | None = None  # per client address, when configured
        self.popular = popularity.Gate()  # objects this node does not own and sees asked often: kept here too
        self.forwarders: Networks = ()  # server.trusted_forwarders: proxies whose X-Forwarded-For is believed
        self.proxy_from: Networks = ()  # server.proxy_protocol_from: who may send a PROXY header (empty: any)
        # With HTTPS listeners (tls.Certificates.misdirected): a connection's TLS object and a request's host ->
        # whether its SNI name chose another certificate than the host's (route.misdirected).
        self.sni_misdirected: Callable[[object, str], bool] | None = None
        # The clients PROXY headers declared for connections the fast path handed over (their socket's peer is
        # the balancer); each entry leaves with its connection (FastServer.hand_over).
        self.declared: dict[asyncio.BaseTransport, str] = {}
        # The fill the fast path started for a cold miss it then handed over (proxy.coldmiss): the connection's
        # next request, which is that miss, carries on with it instead of asking the origin again.
        self.adopted: dict[asyncio.BaseTransport, Adopted] = {}
        # The primary key of the request the fast path let in (its rate token spent) and then handed over with no
        # fill to carry on (it joined another's, or its owner could not be reached): not judged again.
        self.admitted: dict[asyncio.BaseTransport, str] = {}

    @property
    def overloaded(self) -> bool:
        """As many requests in flight as this worker takes: a new one gets admit.OVERLOADED at once."""
        return self.in_flight >= self.max_in_flight

    def reload(self, sites: tuple[Site, ...]) -> None:
        """New sites and policies for the requests that start from now on; requests in flight keep theirs."""
        self.router = Router((s.hosts, s) for s in sites)
        self.access.never = _never_logged(sites)
        _series(sites)

    def connection_address(self, transport: asyncio.BaseTransport | None) -> str:
        """Whom a connection is from: the client its PROXY header declared, else the socket's peer. This is the
        hop a request sent on names in X-Forwarded-For."""
        if transport is None:
            return "-"
        declared = self.declared.get(transport)
        if declared is not None:
            return declared
        peer = transport.get_extra_info("peername")
        return str(peer[0]) if peer else "-"

    def ring_view(self, url: str) -> dict[str, object]:
        """Owner order for a URL and who is up, as this node sees it (admin /ring, `edgecache ring`)."""
        return owner.describe(self.router, self.cluster, url)


def _series(sites: tuple[Site, ...]) -> None:
    """Each site's series of its rare events exists (at 0) before the first: dashboards and alerts see the site."""
    for site in sites:
        metrics.ORIGIN_SHARE_WAITS.labels(site.name)


def _never_logged(sites: tuple[Site, ...]) -> frozenset[str]:
    """The parameters some site never keys (its signed URLs' tokens): never written to the access log (AccessLog.never),
    whichever site's token a line may carry."""
    return frozenset().union(*(keys.never_keyed(s.key_query) for s in sites))
