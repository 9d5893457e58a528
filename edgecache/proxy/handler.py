"""The request path: route by Host, then serve GET/HEAD from the cache and pass everything else through.

The cached path is a small loop: look the entry up, decide (fresh, stale, missing), get a fill's head when the
origin must be asked, and serve. A fill that turns out to carry another version than the entry being served
restarts the loop while no byte has been sent, so a changed object is served whole and new, never mixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import replace
from urllib.parse import urlsplit

from aiohttp import web

from edgecache import metrics
from edgecache.accesslog import AccessLog
from edgecache.cluster.view import ClusterView
from edgecache.config import Site
from edgecache.core import lookaside, popularity, ranges
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.clientaddr import Networks, real_client
from edgecache.core.entry import ObjectMeta
from edgecache.core.fillcost import FillPlan, needed_slices, plan_fill
from edgecache.core.forward import must_pass
from edgecache.core.freshness import Use, current_age, evaluate, stale_if_error_allows, usable
from edgecache.core.headers import Headers, get_first
from edgecache.core.hop import FIELD as HOP
from edgecache.core.hop import Hop
from edgecache.core.keys import BadTarget, CacheKey, digest, entry_key, make_key, variant
from edgecache.core.ratelimit import RateLimiter
from edgecache.core.ring import Member
from edgecache.core.route import Router, normalise_host
from edgecache.core.signing import verify
from edgecache.core.status import CacheStatus, cache_status_header, with_fetched
from edgecache.errors import ClientError, OriginError, VersionChanged
from edgecache.proxy import observe
from edgecache.proxy.engine import Engine, FillRequest, RangeMismatch
from edgecache.proxy.fill import Fill, FillHead
from edgecache.proxy.passthrough import pass_through
from edgecache.proxy.respond import answer_slices, base_headers, plan, send, send_stream
from edgecache.storage.store import slice_name

log = logging.getLogger(__name__)

CACHED_METHODS = frozenset({"GET", "HEAD"})


def error_response(status: int, reason: str) -> web.Response:
    # One short line: an origin's garbage quoted in an error message must not reach the client at length.
    reason = reason.splitlines()[0][:200] if reason else "error"
    headers = {"Cache-Status": cache_status_header(CacheStatus.ERROR, detail=reason[:80].replace('"', "'"))}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    return web.Response(status=status, text=reason + "\n", headers=headers)


def internal(request: web.BaseRequest) -> bool:
    """Did this come in on the node's own Unix socket (server.start_internal: its prefetch)? A client reaches the
    node over TCP only, and nothing it sends changes the family of the socket it came in on."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


class EdgeHandler:
    def __init__(
        self,
        sites: tuple[Site, ...],
        engine: Engine,
        access: AccessLog | None = None,
        cluster: ClusterView | None = None,
    ) -> None:
        self.router: Router[Site] = Router((s.hosts, s) for s in sites)
        self.engine = engine
        self.access = access or AccessLog(None)
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
        # The clients PROXY headers declared for connections the fast path handed over (their socket's peer is
        # the balancer); each entry leaves with its connection (FastServer.hand_over).
        self.declared: dict[asyncio.BaseTransport, str] = {}

    def reload(self, sites: tuple[Site, ...]) -> None:
        """New sites and policies for the requests that start from now on; requests in flight keep theirs."""
        self.router = Router((s.hosts, s) for s in sites)

    def connection_address(self, request: web.BaseRequest) -> str:
        """Whom the request's connection is from: the client its PROXY header declared, else the socket's peer.
        This is the hop a request sent on names in X-Forwarded-For."""
        transport = request.transport
        if transport is None:
            return "-"
        declared = self.declared.get(transport)
        if declared is not None:
            return declared
        peer = transport.get_extra_info("peername")
        return str(peer[0]) if peer else "-"

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        observe.start(request)
        forwarded = request.headers.getall("X-Forwarded-For", ())
        observe.trace(request).client = real_client(self.connection_address(request), forwarded, self.forwarders)
        observe.WRITE_TIMEOUT.set(self.write_timeout)
        resp: web.StreamResponse | None = None
        if self.in_flight >= self.max_in_flight:
            # Shed load before doing any work: a quick, honest answer instead of a slow collapse.
            observe.mark(request, CacheStatus.ERROR)
            resp = error_response(503, "overloaded: try again shortly")
            observe.finish(request, resp, self.access, self.node)
            return resp
        self.in_flight += 1
        try:
            resp = await self._answer(request)
            return resp
        finally:
            self.in_flight -= 1
            observe.finish(request, resp, self.access, self.node)

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except ClientError as exc:
            observe.mark(request, CacheStatus.ERROR)
            return error_response(exc.status, exc.reason)
        except OriginError as exc:
            log.info("%s %s: origin failed: %s", request.method, request.path, exc)
            observe.mark(request, CacheStatus.ERROR)
            if not (exc.timeout or exc.connect):  # those were counted where they happened (origin client)
                metrics.ORIGIN_ERRORS.labels(observe.trace(request).site, "failed").inc()
            return error_response(504 if exc.timeout else 502, f"origin failed: {exc.reason}")

    def _route(self, request: web.BaseRequest) -> tuple[Site, str, CacheKey, Hop | None]:
        if request.method == "CONNECT":
            raise ClientError(405, "CONNECT is refused: this is an edge cache, not a forward proxy")
        url = request._message.url
        if url.is_absolute():
            # RFC 9112 3.2.2: the target's authority wins over Host; it must still be one of our sites.
            if url.scheme not in ("http", "https"):
                raise ClientError(400, "absolute-form target must be http or https")
            host = normalise_host(url.raw_authority)
            target = url.raw_path_qs
        else:
            host = normalise_host(request.headers.get("Host"))
            target = request.raw_path
        if host is None:
            raise ClientError(400, "missing or invalid Host")
        site = self.router.match(host)
        if site is None:
            raise ClientError(421, f"no site is configured for host {host!r}")
        observe.trace(request).site = site.name
        try:
            key = make_key(site.name, host, target, site.key_query)
        except BadTarget as exc:
            raise ClientError(400, str(exc)) from exc
        hops = request.headers.getall(HOP, ())
        hop = self.cluster.honoured(hops, request.method, key.primary) if self.cluster is not None else None
        if hop is not None:
            # The node the viewer connected to judged it (ACL, rate limit), once: not again here, where the address
            # is that node's. Its word for the viewer's address stands for the rest (signed URLs, the access log).
            observe.trace(request).client = hop.viewer
            observe.trace(request).for_peer = True
        client = observe.trace(request).client or "-"
        if hop is None and site.allow and not internal(request) and not site.allows(client):
            raise ClientError(403, f"this address may not use site {site.name!r}")
        if hop is None and self.limiter is not None and not self.limiter.allow(client, time.monotonic()):
            raise ClientError(429, "too many requests from this address")
        # Signed URLs, before any lookup (the fast path's find_hit asks the same). Not again on the owner: the node
        # the viewer reached checked the token before it forwarded (a valid hop says so, as for the ACL); nor for
        # the node's own prefetch, which its admin token authorised.
        if site.signing is not None and hop is None and not internal(request):
            refusal = verify(site.signing, key.path, key.unkeyed, client, time.time())
            if refusal is not None:
                raise ClientError(403, refusal)
        return site, host, key, hop

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.engine.store.stale():  # another worker purged or invalidated something: look at the disk again
            await self.engine.store.catch_up()
        site, host, key, hop = self._route(request)
        headers: Headers = tuple(request.headers.items())
        client_ip = self.connection_address(request)
        # The raw Host field and target are never used again: every request sent on is built from the key.
        req = FillRequest(
            site,
            key.primary,
            key.target,
            key.host,
            headers,
            client_ip,
            site.policy,
            key.primary,
            host_key=host,
            path=key.path,
            key=key,
        )
        if hop is not None:  # forwarded by a node of the cluster: served here, never forwarded again
            observe.trace(request).failover = hop.failover
            req = replace(req, look_aside=hop.lookaside)
            observe.trace(request).look_aside = hop.lookaside
        elif self.cluster is not None:
            owner = self._spread_from(request, req)
            if owner is not None:  # hot here: answered from this node's copy, filled from the owner
                req = replace(req, spread_from=owner)
            elif (forwarded := await self._to_owner(request, req)) is not None:
                return forwarded
        if request.method not in CACHED_METHODS:
            invalidate = (self.engine.store, host)
            return await pass_through(request, self.engine.origin, req, CacheStatus.PASS, invalidate)
        if parse_cache_control(headers).no_store or must_pass(headers) is not None:
            return await pass_through(request, self.engine.origin, req, CacheStatus.PASS)
        return await self._cached(request, req)

    async def _cached(self, request: web.BaseRequest, req: FillRequest) -> web.StreamResponse:
        started: list[Fill] = []
        try:
            return await self._cached_loop(request, req, started)
        finally:
            # A fill this request started and then did not stream (another variant's answer, stale-if-error,
            # a pass-through) must not wait for it: a private one would hold its origin connection for good.
            for fill in started:
                fill.abandon()

    async def _cached_loop(self, request: web.BaseRequest, req: FillRequest, started: list[Fill]) -> web.StreamResponse:
        validated = False
        named: tuple[str, ...] | None = None  # the Vary of an answer that came back for another variant
        for _ in range(3):
            record = await self.engine.store.get_record(req.primary)
            if named is not None and record.vary != named:  # that answer was not stored: look where it points
                record = replace(record, vary=named)
            scope, soft_before = self.engine.store.purges.lookup(req.site.name, req.host_key, req.path)
            key = entry_key(req.primary, record, req.headers, scope)
            req = replace(req, entry_key=key, generation=record.generation, scope=scope, vary=record.vary)
            meta = await self.engine.store.get_meta(req.entry_key)
            now = time.time()
            fresh = (
                evaluate(meta.headers, meta.status, meta.request_time, meta.response_time, now, req.policy)
                if meta is not None
                else None
            )
            if meta is not None and fresh is not None:
                use = usable(req.headers, meta.headers, fresh, req.policy)
                if meta.response_time < max(soft_before, record.soft_before):
                    use = Use.REVALIDATE  # soft-purged: stored before the purge, so it must be revalidated
                if req.look_aside and not lookaside.may_answer(True, validated or use is Use.FRESH, False):
                    raise ClientError(504, lookaside.NOT_HELD)
                try:
                    served = await self._serve_stored(request, req, meta, use, validated)
                except VersionChanged as exc:  # raised before any byte was sent (respond._stream)
                    # A slice it lacks came back as another version: never mixed, so that entry goes and the
                    # request starts again as a miss of the version the origin has now.
                    log.info("%s changed version at the origin, starting again: %s", req.entry_key, exc)
                    await self.engine.store.delete_meta(req.entry_key)
                    validated = False
                    continue
                if served is not None:
                    return served
            if req.look_aside:  # what is held fresh was answered above: a look-aside never fills
                raise ClientError(504, lookaside.NOT_HELD)
            t = observe.trace(request)
            t.expired = meta is not None  # a miss's cause, unless a 304 makes it a revalidation
            if meta is None:
                t.evicted = self.engine.ghosts.object_dropped(digest(req.entry_key))
                if parse_cache_control(req.headers).only_if_cached:
                    raise ClientError(504, "only-if-cached and not in cache")
                if self._conditional(req.headers):
                    # Nothing stored to answer the client's own validators from: let the origin answer them.
                    return await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
            fill, ours = self._fill_for(request, req, meta)
            if ours:
                started.append(fill)
            stale_ok = (
                meta is not None
                and fresh is not None
                and stale_if_error_allows(req.headers, meta.headers, fresh, req.policy)
            )
            if not ours:
                metrics.COLLAPSED.inc()
            try:
                waited = time.monotonic()
                head = await fill.head
                observe.trace(request).origin_ms = round((time.monotonic() - waited) * 1000, 3)
            except RangeMismatch:
                return await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
            except OriginError:
                if meta is not None and stale_ok:
                    return await self._serve(request, req, meta, CacheStatus.STALE, detail="stale-if-error")
                raise
            if head.status >= 500 and meta is not None and stale_ok:
                return await self._serve(request, req, meta, CacheStatus.STALE, detail="stale-if-error")
            if head.status == 304:
                validated = True
                continue
            if head.meta.vary and head.variant != variant(head.meta.vary, req.headers):
                # The fill sent only the fields the key named, and the answer Varies on others this request
                # has: it is another variant's answer. Look again under the key its Vary gives (and so send them).
                named = head.meta.vary
                continue
            observe.trace(request).uncacheable = not head.shared
            if not head.shared and not ours:
                return await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
            status = CacheStatus.MISS if meta is None else CacheStatus.EXPIRED
            try:
                return await self._serve_fill(request, replace(req, entry_key=head.entry_key), fill, head, status, ours)
            except VersionChanged as exc:
                log.info("%s changed version while being served, starting again: %s", req.entry_key, exc)
                await self.engine.store.delete_meta(req.entry_key)
        raise OriginError("the object kept changing while being fetched", retryable=False)

    def ring_view(self, url: str) -> dict[str, object]:
        """Owner order for a URL and who is up, as this node sees it (admin /ring, `edgecache ring`)."""
        parts = urlsplit(url)
        host = normalise_host(parts.netloc)
        site = self.router.match(host) if host else None
        if host is None or site is None:
            return {"url": url, "error": f"no site is configured for host {parts.netloc!r}"}
        try:
            key = make_key(
                site.name, host, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), site.key_query
            )
        except BadTarget as exc:
            return {"url": url, "error": str(exc)}
        owners = self.cluster.describe(key.primary) if self.cluster is not None else []
        return {"url": url, "site": site.name, "key": key.primary, "owners": owners}

    def _spread_from(self, request: web.BaseRequest, req: FillRequest) -> Member | None:
        """The owner to fill a copy from, when this node does not own the object and sees it asked often
        (core.popularity); None: forward as usual. Only plain cacheable GETs and HEADs are counted: a conditional
        or no-store request, or one with a body, is always the owner's to answer."""
        assert self.cluster is not None
        if request.method not in CACHED_METHODS or request.body_exists or self._conditional(req.headers):
            return None
        if parse_cache_control(req.headers).no_store or must_pass(req.headers) is not None:
            return None
        up = self.cluster.route(req.primary)
        if not up or up[0].id == self.cluster.self_id:
            return None
        return up[0] if self.popular.asked(req.primary, time.monotonic()) else None

    async def _to_owner(self, request: web.BaseRequest, req: FillRequest) -> web.StreamResponse | None:
        """Stream the answer from the object's owner; None when this node is the first owner that is up.

        The signed hop field makes the owner serve it itself, so a request is forwarded at most once and two nodes
        that briefly disagree about who is up cannot bounce it between them; it names the viewer judged here.
        """
        assert self.cluster is not None
        first = self.cluster.ring.owner(req.primary)
        for member in self.cluster.route(req.primary):
            # Not the first owner: it is down, and a miss here is a "peer down" miss, not a cold one.
            failover = first is not None and member.id != first.id
            if member.id == self.cluster.self_id:
                observe.trace(request).failover = failover
                return None
            t = observe.trace(request)
            hop = self.cluster.hop_field(request.method, req.primary, t.id, t.client or req.client_ip, failover)
            peer = replace(req.site, origins=(f"http://{member.address}",), origin_host=None)
            try:
                resp = await pass_through(
                    request,
                    self.engine.origin.to_peer(member.id),
                    replace(req, site=peer),
                    CacheStatus.PEER,
                    extra=((HOP, hop),),
                    source="peer",
                )
            except OriginError as exc:
                kind = observe.peer_error(member.id, exc)
                if not exc.connect or not (exc.refused or request.method in ("GET", "HEAD")):
                    return self._peer_failed(request, member.id, kind, exc)
                self.cluster.failed(member.id)  # passive check: the next owner takes its keys now
                continue
            if resp.status >= 500:
                metrics.PEER_ERRORS.labels(member.id, "5xx").inc()
            return resp
        return None

    @staticmethod
    def _peer_failed(request: web.BaseRequest, peer: str, kind: str, exc: OriginError) -> web.Response:
        """The answer when the owner failed and no other node may be asked (a timeout, or a request with a body
        that may have had its effect): the peer's failure, never reported as the origin's."""
        log.info("%s %s: peer %s failed (%s): %s", request.method, request.path, peer, kind, exc)
        observe.mark(request, CacheStatus.ERROR)
        return error_response(504 if exc.timeout else 502, f"peer {peer} failed ({kind}): {exc.reason}")

    @staticmethod
    def _conditional(headers: Headers) -> bool:
        return any(get_first(headers, h) is not None for h in ("if-none-match", "if-modified-since"))

    def _first_index(self, request: web.BaseRequest, meta: ObjectMeta | None) -> tuple[int, int | None]:
        """Which slices a fill for this request starts with; last None: fetch the whole object at once."""
        size = self.engine.slice_size
        header = request.headers.get("Range")
        if meta is not None:
            if meta.whole:
                return 0, None
            result = ranges.resolve(header, meta.length) if header else ranges.NoRange()
            first = result.range.first if isinstance(result, ranges.Single) else 0
            if isinstance(result, ranges.Multi):
                first = result.ranges[0].first
            return first // size, first // size
        if request.method == "HEAD":
            return 0, 0
        specs = ranges.parse_range_header(header) if header else None
        if not specs:
            return 0, None
        spec = specs[0]
        if spec.first is None:  # suffix: the length is unknown, so learn it from the first slice
            return 0, 0
        first = spec.first // size
        last = spec.last // size if spec.last is not None else first + self.engine.fill_slices - 1
        return first, min(last, first + self.engine.fill_slices - 1)

    def _fill_for(self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta | None) -> tuple[Fill, bool]:
        first, last = self._first_index(request, meta)
        existing = self.engine.fills.find(req.entry_key, first)
        if existing is not None:
            return existing, False
        if last is not None:  # stop the run before a slice someone else is already fetching
            for index in range(first + 1, last + 1):
                if self.engine.fills.find(req.entry_key, index) is not None:
                    last = index - 1
                    break
        fill = self.engine.start_fill(req, first, last, validate=meta)
        fill.streamed = True  # _serve_fill streams a private answer to this request
        return fill, True

    async def _multipart_passes(self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta) -> bool:
        """Whether the client's multipart Range would make the origin send far more than it is served (the rule
        is core.fillcost's): such a request is passed through, its own Range to the origin, nothing stored."""
        if request.method == "HEAD" or "," not in (get_first(req.headers, "range") or ""):
            return False  # no body, or not a multipart Range: no need to plan the answer twice
        _, rng = plan(request.method, req.headers, meta)
        if not isinstance(rng, ranges.Multi):
            return False
        size = self.engine.slice_size
        if plan_fill(rng.ranges, size, whole=meta.whole) is FillPlan.FILL:
            return False  # within the bound even with nothing stored: no need to look
        needed = needed_slices(rng.ranges, size)
        missing = set(await self.engine.store.missing(req.entry_key, meta, needed))
        cached = [i for i in needed if i not in missing or self.engine.fills.find(req.entry_key, i) is not None]
        return plan_fill(rng.ranges, size, cached, whole=meta.whole) is FillPlan.PASS

    def _revalidate_in_background(self, req: FillRequest, meta: ObjectMeta) -> None:
        first = 0
        if self.engine.fills.find(req.entry_key, first) is None:
            self.engine.start_fill(req, 0, None if meta.whole else 0, validate=meta)

    async def _serve_stored(
        self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta, use: Use, validated: bool
    ) -> web.StreamResponse | None:
        """The answer from a stored entry, if `use` (or a revalidation that just confirmed it) allows one."""
        if validated:
            return await self._serve(request, req, meta, CacheStatus.REVALIDATED)
        if use is Use.FRESH:
            return await self._serve(request, req, meta, CacheStatus.HIT)
        if use is Use.STALE_OK:
            return await self._serve(request, req, meta, CacheStatus.STALE)
        if use is Use.STALE_WHILE_REVALIDATE:
            self._revalidate_in_background(req, meta)
            return await self._serve(request, req, meta, CacheStatus.STALE)
        return None

    async def _serve(
        self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta, status: CacheStatus, detail: str = ""
    ) -> web.StreamResponse:
        if await self._multipart_passes(request, req, meta):
            return await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
        status = await self._completed(request, req, meta, status)
        if req.look_aside and not lookaside.may_answer(True, True, status is CacheStatus.PARTIAL):
            raise ClientError(504, lookaside.NOT_HELD)
        observe.mark(request, status)
        age = current_age(meta.headers, meta.request_time, meta.response_time, time.time())
        headers = base_headers(meta.headers, int(age), cache_status_header(status, detail=detail))
        return await send(
            request,
            req.headers,
            meta,
            headers,
            lambda f, last: self.engine.read_range(req, meta, f, last),
            in_memory=lambda f, last: self.engine.memory_range(req, meta, f, last),
        )

    async def _completed(
        self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta, status: CacheStatus
    ) -> CacheStatus:
        """`status` for an answer from the stored entry, or PARTIAL when a slice it needs is in neither tier and
        is to be fetched (core.status.with_fetched): a hit is said only when no byte of it comes from origin."""
        needed = answer_slices(request.method, req.headers, meta, self.engine.slice_size)
        missing = await self.engine.store.missing(req.entry_key, meta, needed) if needed else []
        if missing:
            dropped = self.engine.ghosts.slice_dropped
            version = meta.slice_version
            observe.trace(request).evicted = any(dropped(slice_name(req.entry_key, version, i)) for i in missing)
        return with_fetched(status, bool(missing))

    async def _serve_fill(
        self,
        request: web.BaseRequest,
        req: FillRequest,
        fill: Fill,
        head: FillHead,
        status: CacheStatus,
        ours: bool,
    ) -> web.StreamResponse:
        observe.mark(request, status)
        t = observe.trace(request)
        t.from_peer = head.peer is not None
        t.moved = t.from_peer and req.spread_from is None  # a look-aside at the previous owner, not a spread copy
        # The request that started the fill gets fields a shared cache keeps from everyone else (private="f").
        meta = replace(head.meta, headers=head.served) if ours and head.served else head.meta
        detail = "" if head.shared else head.reason
        if head.peer is not None:  # a spread copy's fill from the owner, or an owner's look-aside
            detail = "peer" if req.spread_from is not None else lookaside.DETAIL
        cstatus = cache_status_header(status, stored=head.store, detail=detail)
        age = current_age(meta.headers, meta.request_time, meta.response_time, time.time())
        headers = base_headers(meta.headers, int(age), cstatus)
        if head.shared and meta.length >= 0:
            if await self._multipart_passes(request, req, meta):
                return await pass_through(request, self.engine.origin, req, status)
            read = lambda f, last: self.engine.read_range(req, meta, f, last)  # noqa: E731
            return await send(request, req.headers, meta, headers, read)
        if head.start != 0 or fill.last_index is not None:
            # An uncacheable answer to a ranged fill: ask again for exactly what the client wants.
            return await pass_through(request, self.engine.origin, req, status)
        # Closed as soon as the answer ends, sent or not: a private fill then knows its one reader has left.
        async with contextlib.aclosing(fill.stream()) as body:
            return await send_stream(request, meta.status, headers, body, head.end)
