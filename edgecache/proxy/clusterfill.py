"""A fill's request to another node of the cluster in place of the origin: the previous owner's cache when this
node owns the object (core.lookaside), or the owner, for the copy of a hot object (core.popularity)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial

from edgecache import metrics
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import admit, lookaside, ranges
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import OriginRequest
from edgecache.core.headers import Headers
from edgecache.core.hop import FIELD as HOP
from edgecache.core.keys import keyed_fields
from edgecache.core.ring import Member
from edgecache.errors import OriginError, PeerWithheld
from edgecache.proxy import observe
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.origin import OriginClient, OriginResponse
from edgecache.storage.store import Store

log = logging.getLogger(__name__)


async def look_aside(
    view: ClusterView | None,
    origin: OriginClient,
    store: Store,
    req: FillRequest,
    sent: OriginRequest,
    asked: ranges.ByteRange | None,
    viewer: Headers,
) -> OriginResponse | None:
    """The previous owner's answer from its cache when this node owns the object (core.lookaside), in place
    of the origin's; None when there is nobody to ask or its answer may not be stored here: then the origin
    is asked at once. The request is the fill's, sent to the key's host with a signed look-aside hop; the
    answer is taken only for the version of the slices already stored here, fresh here for the request it is for
    (`viewer`: its fields; core.lookaside.judge), without what the peer added."""
    peer = view.previous_owner(req.primary) if view is not None and req.primary and req.key.host else None
    if view is None or peer is None:
        return None
    site, headers = _to_peer(view, req, sent, peer, look_aside=True)
    held = await store.get_meta(req.entry_key)
    varied = tuple(sorted(name for name, _ in keyed_fields(req.entry_key)))
    held_version = held.version if held is not None else None
    judged = lookaside.Asked(
        sent.headers, asked, held_version, varied, req.policy, time.time(), req.soft_before, viewer
    )
    try:
        async with asyncio.timeout(view.settings.timeout):
            resp = await _peer(view, origin, peer, req).request(site, sent.method, sent.target, headers)
    except PeerWithheld:  # it may still hold what a purge applied here removed
        metrics.PEER_LOOKASIDE.labels(peer.id, lookaside.Outcome.BEHIND).inc()
        return None
    except (OriginError, TimeoutError) as exc:
        error = exc if isinstance(exc, OriginError) else OriginError("look-aside timed out", timeout=True)
        observe.peer_error(peer.id, error)
        metrics.PEER_LOOKASIDE.labels(peer.id, lookaside.Outcome.ERROR).inc()
        return None
    outcome = lookaside.judge(resp.status, resp.headers, judged, time.time())
    metrics.PEER_LOOKASIDE.labels(peer.id, outcome).inc()
    if outcome is not lookaside.Outcome.HIT:
        resp.close()  # its body is not read: the connection is not reused
        return None
    resp.headers = lookaside.origin_fields(resp.headers)
    return resp


async def from_owner(
    view: ClusterView,
    origin: OriginClient,
    req: FillRequest,
    sent: OriginRequest,
    asked: ranges.ByteRange | None,
    viewer: Headers,
    validate: ObjectMeta | None,
) -> OriginResponse | None:
    """The answer of the owner (`req.spread_from`) to the fill of a spread copy (core.popularity), taken as the
    origin's would be when it is fresh here for the request it is for (`viewer`: its fields; core.lookaside.from_owner,
    a 304 to the revalidation of `validate` judged as the copy it makes); None when the owner could not be asked, did
    not serve it, or answered what may not be taken (then the origin is, as the next owner would): its failures are
    the peer's, counted as such, and one that could not connect takes it down at once. An owner that may lack a
    purge applied here which covers the object is not asked: its copy may be what it removed."""
    owner = req.spread_from
    assert owner is not None
    # No soft purge judged by the answer's Age (whole seconds: an answer the owner fetched just after one looked
    # made before it): an owner that may lack a purge applied here is never asked (PeerWithheld below).
    judged = lookaside.Asked(sent.headers, asked, None, (), req.policy, time.time(), 0.0, viewer)
    site, headers = _to_peer(view, req, sent, owner, look_aside=False)
    try:
        resp = await _peer(view, origin, owner, req).request(site, sent.method, sent.target, headers)
    except PeerWithheld:
        metrics.PEER_COPIES.labels(owner.id, lookaside.Outcome.BEHIND).inc()
        return None
    except OriginError as exc:
        observe.peer_error(owner.id, exc)
        metrics.PEER_COPIES.labels(owner.id, lookaside.Outcome.ERROR).inc()
        if exc.connect:
            view.failed(owner.id, f"fill from the owner: {exc}")
        return None
    if resp.status == admit.LOOPED.status:
        # The owner did not honour the hop (the two clocks are further apart than hop.MAX_SKEW) and took the fill,
        # whose Via names the cluster as every fill's does, for a request come back to the edge: nothing served.
        resp.close()
        metrics.PEER_ERRORS.labels(owner.id, "5xx").inc()
        metrics.PEER_COPIES.labels(owner.id, lookaside.Outcome.ERROR).inc()
        return None
    held = validate.headers if validate is not None else None
    if not lookaside.from_owner(resp.status, resp.headers, judged, time.time(), held):
        log.info("%s: owner %s answered a copy not fresh here or for its viewer", req.record_key, owner.id)
        metrics.PEER_COPIES.labels(owner.id, lookaside.Outcome.STALE).inc()
        resp.close()  # its body is not read: the connection is not reused
        return None
    metrics.PEER_COPIES.labels(owner.id, lookaside.Outcome.HIT).inc()
    resp.headers = lookaside.origin_fields(resp.headers)
    return resp


def _peer(view: ClusterView, origin: OriginClient, peer: Member, req: FillRequest) -> OriginClient:
    """The origin client's view for a fill's request to `peer`, which is not sent, on the first attempt or on one
    aiohttp makes again, while the peer may hold what a purge applied here removed (counted as the fill's)."""
    return origin.to_peer(peer.id, partial(view.lacks_purge, peer.id, req.site.name, req.key, counted=False))


def _to_peer(
    view: ClusterView, req: FillRequest, sent: OriginRequest, peer: Member, look_aside: bool
) -> tuple[Site, Headers]:
    """Where and with which fields a fill's request goes to a peer: the key's host, and a signed hop."""
    field = view.hop_field(sent.method, req.primary, "fill", "-", False, look_aside=look_aside)
    site = replace(req.site, origins=(f"http://{peer.address}",), origin_host=None)
    headers = (("Host", req.key.host), *((k, v) for k, v in sent.headers if k.lower() != "host"), (HOP, field))
    return site, headers
