"""Which node answers a request in a cluster: the object's owner, to which it is forwarded once, or this node
for a hot object it does not own, its copy filled from the owner (core.popularity)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial

from aiohttp import web

from edgecache import metrics
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import admit, popularity
from edgecache.core.hop import FIELD as HOP
from edgecache.core.ring import Member
from edgecache.core.route import Router
from edgecache.core.siteurl import site_url
from edgecache.core.status import CacheStatus
from edgecache.errors import ClientError, OriginError, PeerWithheld
from edgecache.proxy import observe
from edgecache.proxy.errorpage import error_response, peer_failed
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.origin import OriginClient
from edgecache.proxy.passthrough import pass_through
from edgecache.proxy.serving import CACHED_METHODS

log = logging.getLogger(__name__)


def describe(router: Router[Site], cluster: ClusterView | None, url: str) -> dict[str, object]:
    """Owner order for a URL and who is up, as this node sees it (admin /ring, `edgecache ring`). Raises
    NotSiteURL (core.siteurl) for a URL no site has or the cache cannot key."""
    found = site_url(url, router)
    owners = cluster.describe(found.key.primary) if cluster is not None else []
    return {"url": url, "site": found.site.name, "key": found.key.primary, "owners": owners}


def spread_from(
    cluster: ClusterView, popular: popularity.Gate, request: web.BaseRequest, req: FillRequest
) -> Member | None:
    """The owner to fill a copy from, when this node does not own the object and sees it asked often
    (core.popularity); None: forward as usual. Only plain cacheable GETs and HEADs are counted: a conditional
    or no-store request, or one with a body, is always the owner's to answer."""
    if request.method not in CACHED_METHODS or request.body_exists or not popularity.spreadable(req.headers):
        return None
    up = cluster.route(req.primary)
    if not up or up[0].id == cluster.self_id:
        return None
    return up[0] if popular.asked(req.primary, time.monotonic()) else None


async def to_owner(
    cluster: ClusterView, origin: OriginClient, request: web.BaseRequest, req: FillRequest
) -> web.StreamResponse | None:
    """Stream the answer from the object's owner; None when this node is the first owner that is up.

    The signed hop field makes the owner serve it itself, so a request is forwarded at most once and two nodes
    that briefly disagree about who is up cannot bounce it between them; it names the viewer judged here.
    """
    first = cluster.ring.owner(req.primary)
    for member in cluster.route(req.primary):
        # Not the first owner: it is down, and a miss here is a "peer down" miss, not a cold one.
        failover = first is not None and member.id != first.id
        if member.id == cluster.self_id:
            observe.trace(request).failover = failover
            return None
        if (back := admit.sent_back(request.headers.getall(HOP, ()), member.id)) is not None:
            raise ClientError.of(back)
        t = observe.trace(request)
        hop = cluster.hop_field(request.method, req.primary, t.id, t.client or req.client_ip, failover)
        peer = replace(req.site, origins=(f"http://{member.address}",), origin_host=None)
        # It may still hold what a purge applied here removed: asked before each attempt, the first and any aiohttp
        # sends again, and answered here if so (route.forward_verdict).
        withheld = partial(cluster.lacks_purge, member.id, req.site.name, req.key)
        try:
            resp = await pass_through(
                request,
                origin.to_peer(member.id, withheld if request.method in CACHED_METHODS else None),
                replace(req, site=peer),
                CacheStatus.PEER,
                extra=((HOP, hop),),
                source="peer",
            )
        except PeerWithheld:
            return None
        except OriginError as exc:
            observe.trace(request).sources.asked(exc.tried)  # named before whoever answers instead, or in the 502
            kind = observe.peer_error(member.id, exc)
            if not exc.connect or not (exc.refused or request.method in ("GET", "HEAD")):
                return _peer_failed(request, member.id, kind, exc)
            cluster.failed(member.id, f"forward: {exc}")  # passive check: the next owner takes its keys now
            continue
        if resp.status >= 500:
            metrics.PEER_ERRORS.labels(member.id, "5xx").inc()
        return resp
    return None


def _peer_failed(request: web.BaseRequest, peer: str, kind: str, exc: OriginError) -> web.Response:
    """The answer when the owner failed and no other node may be asked (a timeout, or a request with a body
    that may have had its effect): the peer's failure, never reported as the origin's."""
    log.info("%s %s: peer %s failed (%s): %s", request.method, request.path, peer, kind, exc)
    observe.mark(request, CacheStatus.ERROR)
    return error_response(*peer_failed(kind, exc.timeout))
