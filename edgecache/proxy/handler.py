"""The request path: route by Host, then serve GET/HEAD from the cache and pass everything else through.

The cached path is a small loop: look the entry up, decide (fresh, stale, missing), get a fill's head when the
origin must be asked, and serve (proxy.serving). A fill that turns out to carry another version than the entry
being served restarts the loop while no byte has been sent, so a changed object is served whole and new, never
mixed. In a cluster, a request for an object another node owns is forwarded to it first (proxy.owner).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace

from aiohttp import web

from edgecache import metrics
from edgecache.config import Site
from edgecache.core import admit, churn, lookaside
from edgecache.core.cachecontrol import parse_cache_control
from edgecache.core.clientaddr import real_client
from edgecache.core.conditional import validates
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import must_pass
from edgecache.core.freshness import Freshness, Use, freshness_of, may_stand_in, never_stale, stored_use
from edgecache.core.headers import Headers
from edgecache.core.hop import FIELD as HOP
from edgecache.core.hop import Hop
from edgecache.core.keys import BadTarget, CacheKey, digest, entry_key, make_key, variant
from edgecache.core.maxforwards import ASTERISK, own_answer
from edgecache.core.status import CacheStatus, cache_status_header, found_of, of_304, of_fill
from edgecache.errors import ClientError, OriginError, Overtaken, PeerCut, VersionChanged
from edgecache.proxy import observe, owner, serving, wholefill
from edgecache.proxy.errorpage import error_response, in_http11, origin_failed
from edgecache.proxy.expecting import Expected
from edgecache.proxy.fill import Adopted, Fill, FillHead
from edgecache.proxy.fillhead import RangeMismatch
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.passthrough import pass_through, relay_changing
from edgecache.proxy.route import addressed, misdirected
from edgecache.proxy.serving import CACHED_METHODS
from edgecache.proxy.shared import Shared

log = logging.getLogger(__name__)
_ADMITTED = web.RequestKey("edgecache_admitted", str)  # Shared.admitted, for the request it names


def internal(request: web.BaseRequest) -> bool:
    """Did this come in on the node's own Unix socket (server.start_internal: its prefetch)? A client reaches the
    node over TCP only, and nothing it sends changes the family of the socket it came in on."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


class EdgeHandler:
    """The full handler: aiohttp's request handler for what the fast path hands it (proxy.fastpath)."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.engine = shared.engine  # one per worker, never replaced (the sites are: shared.router)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        adopted = self.shared.adopted.pop(transport, None) if transport is not None else None
        if transport is not None and (admitted := self.shared.admitted.pop(transport, None)) is not None:
            request[_ADMITTED] = admitted
        try:
            return await self._call(request, adopted)
        except ConnectionError:
            if request.transport is not None and not request.transport.is_closing():
                raise
            # The client left mid-answer (logged with status 0 by observe.finish). Raised, aiohttp would log an
            # error with its traceback for every viewer that stops a video; an answer it cannot write, it drops.
            return web.StreamResponse()
        finally:
            if adopted is not None:  # read, or not needed after all: nobody else reads it
                adopted.let_go()

    async def _call(self, request: web.BaseRequest, adopted: Adopted | None) -> web.StreamResponse:
        observe.start(request)
        if adopted is not None:  # the miss began on the fast path: timed from there
            observe.trace(request).t0 = adopted.began
        forwarded = request.headers.getall("X-Forwarded-For", ())
        observe.trace(request).client = real_client(
            self.shared.connection_address(request.transport), forwarded, self.shared.forwarders
        )
        observe.trace(request).prefetch = internal(request)
        observe.WRITE_TIMEOUT.set(self.shared.write_timeout)
        resp: web.StreamResponse | None = None
        if self.shared.overloaded:
            metrics.SHED_REQUESTS.inc()
            observe.mark(request, CacheStatus.ERROR)
            resp = error_response(admit.OVERLOADED.status, admit.OVERLOADED.reason)
            observe.finish(request, resp, self.shared.access, self.shared.node)
            return resp
        self.shared.in_flight += 1
        try:
            resp = await self._answer(request, adopted)
            return resp
        finally:
            self.shared.in_flight -= 1
            observe.finish(request, resp, self.shared.access, self.shared.node)

    async def _answer(self, request: web.BaseRequest, adopted: Adopted | None) -> web.StreamResponse:
        try:
            return await self._handle(request, adopted)
        except ClientError as exc:
            observe.mark(request, CacheStatus.ERROR)
            resp = error_response(exc.status, exc.reason, exc.retry_after)
            if exc.close:
                resp.force_close()
            return resp
        except OriginError as exc:
            log.info("%s %s: origin failed: %s", request.method, request.path, exc)
            observe.mark(request, CacheStatus.ERROR)
            observe.trace(request).sources.asked(exc.tried)
            status, reason, uncounted = origin_failed(exc)
            if uncounted:
                metrics.ORIGIN_ERRORS.labels(observe.trace(request).site, "failed").inc()
            return error_response(status, reason)
        except Exception as exc:
            # A bug, or a storage call failing as it never should: a 500 that says so while no byte of the answer
            # has gone out (aiohttp's own says nothing, and was counted as no answer), as the fast path answers
            # (refuse.failed); after, the connection is cut (aiohttp's handle_error looks at the same count).
            if isinstance(exc, ConnectionError) or request.writer.output_size > 0:
                raise
            log.exception("%s %s: internal error", request.method, request.path)
            observe.mark(request, CacheStatus.ERROR)
            reply = admit.internal(type(exc).__name__)
            resp = error_response(reply.status, reply.reason)
            resp.force_close()  # what raised may have left the connection anything: nothing after it is answered
            return resp

    def _route(self, request: web.BaseRequest, admitted: str | None) -> tuple[Site, str, CacheKey, Hop | None]:
        """The site, host and key a request names, and its hop; refused (ClientError) as it must be. `admitted`:
        the primary key of the miss whose fill the fast path started after letting it in (adopted): when this
        request is that one, the ACL, the rate limiter and the signed URL judged it at its arrival, and are not
        asked again (a token that expired while the origin answered, or a second token spent, would refuse a
        request already sent on)."""
        if request.method == "CONNECT":
            # The connection closes with it: a CONNECT has no content (RFC 9110 9.3.6), so bytes a Content-Length
            # announces after its head would be read here as the next request, and a proxy in front that took
            # them for the CONNECT's body would pair every later answer with the wrong request.
            raise ClientError(405, "CONNECT is refused: this is an edge cache, not a forward proxy", close=True)
        found = addressed(request._message.url, request.raw_path, request.headers.get("Host"))
        if isinstance(found, admit.Reply):
            raise ClientError.of(found)
        host, target = found
        if misdirected(self.shared, request.transport, host):  # HTTPS: another certificate's host than its SNI's
            raise ClientError(admit.MISDIRECTED.status, admit.MISDIRECTED.reason, close=True)
        site = self.shared.router.match(host)
        if site is None:
            raise ClientError.of(admit.no_site(host))
        observe.trace(request).site = site.name
        try:
            key = make_key(site.name, host, target, site.key_query)
        except BadTarget as exc:
            raise ClientError.of(admit.bad_target(str(exc))) from exc
        t = observe.trace(request)
        t.target, t.host = key.full_target, key.host
        cluster = self.shared.cluster
        hop = cluster.honoured(request.headers.getall(HOP, ()), request.method, key.primary) if cluster else None
        if hop is not None:
            # The node the viewer connected to judged it (ACL, signed URL, rate limit), once: not again here, where
            # the address is that node's. Its word for the viewer's address stands for the rest (the access log).
            observe.trace(request).client = hop.viewer
            observe.trace(request).for_peer = True
            return site, host, key, hop
        client = observe.trace(request).client or "-"
        if admitted == key.primary:
            return site, host, key, hop
        # Before any lookup (the fast path asks the same, core.admit); not for the node's own prefetch, which its
        # admin token authorised.
        reply = admit.looped(request.headers.getall("Via", []), self.shared.engine.origin.loop_token)
        if reply is None and not internal(request):
            reply = admit.viewer(site, key.path, key.unkeyed, client, time.time())
        limiter = self.shared.limiter
        if reply is None and limiter is not None:
            reply = limiter.refusal(client, time.monotonic())
        if reply is not None:
            raise ClientError.of(reply)
        return site, host, key, hop

    async def _handle(self, request: web.BaseRequest, adopted: Adopted | None) -> web.StreamResponse:
        if (unframed := admit.version(*request.version)) is not None:  # the fast path's too (route.unversioned)
            observe.mark(request, CacheStatus.ERROR)
            return in_http11(unframed.status, unframed.reason)
        if self.engine.store.stale():  # another worker purged or invalidated something: look at the disk again
            await self.engine.store.catch_up()
        headers: Headers = tuple(request.headers.items())
        if request.raw_path == ASTERISK and (reached := _max_forwards_reached(request, headers)) is not None:
            return reached  # `OPTIONS *`: about this node, no site's (and no key can be made of it)
        site, host, key, hop = self._route(request, adopted.primary if adopted is not None else request.get(_ADMITTED))
        if (reached := _max_forwards_reached(request, headers)) is not None:
            return reached
        client_ip = self.shared.connection_address(request.transport)
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
            # Its X-Forwarded-For ends with the viewer the node added: the node's own address is not the client's.
            req = replace(req, look_aside=hop.lookaside, client_ip="")
            observe.trace(request).look_aside = hop.lookaside
        elif self.shared.cluster is not None:
            first = owner.spread_from(self.shared.cluster, self.shared.popular, request, req)
            if first is not None:  # hot here: answered from this node's copy, filled from the owner
                req = replace(req, spread_from=first)
            elif (forwarded := await owner.to_owner(self.shared.cluster, self.engine.origin, request, req)) is not None:
                return forwarded
        if request.method not in CACHED_METHODS:
            invalidate = (self.engine.store, host)
            return await pass_through(request, self.engine.origin, req, CacheStatus.PASS, invalidate)
        if parse_cache_control(headers).no_store or must_pass(headers) is not None:
            return await pass_through(request, self.engine.origin, req, CacheStatus.PASS)
        if adopted is not None and adopted.primary != req.primary:
            adopted = None  # not this request's fill (it cannot be: the bytes were in order), so never used
        return await self._cached(request, req, adopted)

    async def _cached(self, request: web.BaseRequest, req: FillRequest, adopted: Adopted | None) -> web.StreamResponse:
        held = _Held()
        try:
            return await self._cached_loop(request, req, held, adopted)
        finally:
            held.let_go()

    async def _cached_loop(
        self, request: web.BaseRequest, req: FillRequest, held: _Held, adopted: Adopted | None
    ) -> web.StreamResponse:
        """`adopted`: the fill the fast path started for this miss: whatever it stored since, this is that miss."""
        validated: CacheStatus | None = None  # the status of a stored entry a fill just confirmed (of_304)
        named: tuple[str, ...] | None = None  # the Vary of an answer that came back for another variant
        tries = churn.Tries()
        while (step := tries.next()) is churn.Next.FILL:
            tries = tries.begun()
            req, meta, soft_before = await self._look_up(req, named)
            # An adopted fill is this request's miss, or its revalidation of the entry it was started to validate,
            # whatever that fill has stored since.
            meta = meta if adopted is None else adopted.validating
            fresh = freshness_of(meta, time.time(), req.policy) if meta is not None else None
            if validated is None and named is None:  # what it found, for its answer's fwd (not the revalidated entry)
                req = replace(req, found=found_of(req.headers, fresh, bool(req.vary)))
            try:
                if meta is not None and fresh is not None:
                    use = self._use(req, meta, fresh, soft_before, validated is not None)
                    served = await serving.serve_stored(self.engine, request, req, meta, use, validated)
                    if served is not None:
                        return served
                instead = await self._instead_of_fill(request, req, meta)
                if instead is not None:
                    return instead
                fill, ours, origin_ms = self._fill_of(request, req, meta, adopted, held)
                adopted = None
                fill, ours, head = await self._answering(request, req, fill, ours, meta, held)
            except VersionChanged as exc:
                await self._changed_before_head(req, meta, exc)
                # The entry an adopted fill was started to revalidate is not taken again: looked up afresh (a purge
                # met meanwhile keys the object elsewhere, where that entry's slices are not).
                validated, adopted = None, None
                tries = exc.counted(tries)
                continue
            if origin_ms is not None:  # the head came while the fast path waited for it (proxy.coldmiss)
                observe.trace(request).origin_ms = origin_ms
            if not isinstance(head, FillHead):
                return head  # the answer without the fill's body: a pass-through, or the stale entry
            if head.status == 304:
                validated = of_304(head.worker)
                continue
            if head.meta.vary and head.variant != variant(head.meta.vary, req.headers):
                # The fill sent only the fields the key named, and the answer Varies on others this request has:
                # another variant's answer. Look again under the key its Vary gives (and so send them). Nobody reads
                # this fill: a private one holds fill memory until let go, which the variant's own may wait for.
                if ours:
                    fill.abandon()
                named = head.meta.vary
                continue
            try:
                return await self._serve_head(request, req, fill, head, meta, ours, held.expected[-1])
            except VersionChanged as exc:
                tries = await self._changed_after_head(req, exc, tries)
        # Out of tries: one origin request, relayed unstored, said as what kept it from a fill (core.churn).
        return await relay_changing(request, self.engine.origin, req, step)

    async def _changed_after_head(self, req: FillRequest, exc: VersionChanged, tries: churn.Tries) -> churn.Tries:
        """Raised by the answer's fill before its head went out (serving.serve_fill): the entry goes, and the
        request starts again. Its tries, with what this one met."""
        log.info("%s changed version while being served, starting again: %s", req.entry_key, exc)
        await self.engine.store.delete_meta(req.entry_key)
        return exc.counted(tries)

    async def _changed_before_head(self, req: FillRequest, meta: ObjectMeta | None, exc: VersionChanged) -> None:
        """Raised before any byte was sent: a slice the stored entry lacks came back as another version
        (respond._stream), or its revalidation's 304 was for another or forbade storing it (fillhead._of_304), never
        mixed nor kept; or a peer's answer its slice was read from broke off (PeerCut: the owner's own fill met a new
        version, or it was killed): that entry goes and the request starts again as a miss of the origin's version. A
        fill a purge overtook (Overtaken) drops nothing: the purge did, and a copy stored since may be of the same
        version; nor does a slice unread through its tries (Unread), whose copy is the origin's still."""
        if isinstance(exc, Overtaken):
            log.info("%s: overtaken, nothing dropped: %s", req.entry_key, exc)
            return
        why = "the peer's answer broke off" if isinstance(exc, PeerCut) else "changed version at the origin"
        log.info("%s: %s, starting again: %s", req.entry_key, why, exc)
        if meta is not None:
            await self.engine.store.drop_version(req.entry_key, meta)

    def _fill_of(
        self,
        request: web.BaseRequest,
        req: FillRequest,
        meta: ObjectMeta | None,
        adopted: Adopted | None,
        held: _Held,
    ) -> tuple[Fill, bool, float | None]:
        """The fill the request reads (the adopted one, else one started or joined), whether it is this request's,
        and how long the adopted one's head took; one this request started is noted in `held`, and the request is
        that fill's reader from now on (no longer the one it read before, if any)."""
        fill, ours = serving.fill_for(self.engine, request, req, meta) if adopted is None else (adopted.fill, True)
        if adopted is not None and adopted.expected is not None:
            held.expected.append(adopted.expected)  # the fast path's, taken over
        _reads(request, fill, ours, held)
        return fill, ours, adopted.origin_ms if adopted is not None else None

    async def _answering(
        self, request: web.BaseRequest, req: FillRequest, fill: Fill, ours: bool, meta: ObjectMeta | None, held: _Held
    ) -> tuple[Fill, bool, FillHead | web.StreamResponse]:
        """The fill a miss is answered from, whether it is this request's, and its head (or the answer in its place:
        _head_of): the fill it read, or one of the whole object when that one brings a run of slices of a copy with no
        version that its answer goes past (proxy.wholefill)."""
        stale = meta if may_stand_in(req.headers, meta, req.policy, time.time()) else None
        strict = meta is not None and never_stale(meta.headers)
        head = await self._head_of(request, req, fill, stale, strict)
        size = self.engine.slice_size
        if isinstance(head, FillHead) and wholefill.needs_whole(fill, head, request.method, req.headers, size):
            fill, ours = self.engine.fill_for(replace(req, entry_key=head.entry_key), 0, None, whole=True)
            _reads(request, fill, ours, held)
            head = await self._head_of(request, req, fill, stale, strict)
        return fill, ours, head

    async def _look_up(
        self, req: FillRequest, named: tuple[str, ...] | None
    ) -> tuple[FillRequest, ObjectMeta | None, float]:
        """The request keyed under the object's record (with the Vary `named`, when an answer named another) and
        its purges, what is stored under that key, and the time before which a stored answer is soft-purged."""
        record = (await self.engine.store.get_record(req.primary)).named(named)
        scope, soft = self.engine.store.purged(req.site.name, req.host_key, req.path, record)
        key = entry_key(req.primary, record, req.headers, scope)
        req = replace(req, entry_key=key, generation=record.generation, scope=scope, vary=record.vary, soft_before=soft)
        meta = await self.engine.store.get_meta(req.entry_key)
        return req, meta, soft

    @staticmethod
    def _use(req: FillRequest, meta: ObjectMeta, fresh: Freshness, soft_before: float, validated: bool) -> Use:
        """What the stored entry may be used for; a look-aside it cannot answer is refused here."""
        use = stored_use(req.headers, meta.headers, fresh, req.policy, meta.request_time, soft_before)
        if req.look_aside and not lookaside.may_use(use, validated):
            raise ClientError(504, lookaside.NOT_HELD)
        return use

    async def _instead_of_fill(
        self, request: web.BaseRequest, req: FillRequest, meta: ObjectMeta | None
    ) -> web.StreamResponse | None:
        """The answer to a request the stored entry did not answer when no fill may be started for it (a
        refusal raised, or a pass-through); None: fill. Notes what the miss found, for its cause."""
        cc = parse_cache_control(req.headers)
        instead = admit.unfilled(req.look_aside, meta is not None, cc.only_if_cached, validates(req.headers))
        if isinstance(instead, admit.Reply):
            raise ClientError.of(instead)
        t = observe.trace(request)
        t.expired = meta is not None  # a miss's cause, unless a 304 makes it a revalidation
        if meta is None:
            t.evicted = self.engine.ghosts.object_dropped(digest(req.entry_key))
        if instead is admit.PASS:
            return await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
        return None

    async def _head_of(
        self, request: web.BaseRequest, req: FillRequest, fill: Fill, stale: ObjectMeta | None, strict: bool
    ) -> FillHead | web.StreamResponse:
        """The fill's head, or the answer in its place: a pass-through when the origin's 206 fits no slices, or
        the `stale` entry when the origin failed and stale-if-error allows it (else the failure is raised, as the
        revalidation's of an entry never served stale when `strict`: OriginError.status)."""
        try:
            waited = time.monotonic()
            head = await fill.heard()
            observe.trace(request).origin_ms = round((time.monotonic() - waited) * 1000, 3)
            observe.trace(request).sources.asked(fill.addr)
        except RangeMismatch as exc:  # a 416 that tells the length may answer the client's range at once
            answer = await serving.past_the_end(request, req, exc)
            return answer or await pass_through(request, self.engine.origin, req, CacheStatus.MISS)
        except VersionChanged:
            raise  # not the origin's failure: the object is fetched again (_cached_loop)
        except OriginError as exc:
            if stale is not None:
                return await serving.serve(self.engine, request, req, stale, CacheStatus.STALE, detail="stale-if-error")
            if strict:
                raise exc.revalidating() from exc
            raise
        if head.status >= 500 and stale is not None:
            return await serving.serve(self.engine, request, req, stale, CacheStatus.STALE, detail="stale-if-error")
        return head

    async def _serve_head(
        self,
        request: web.BaseRequest,
        req: FillRequest,
        fill: Fill,
        head: FillHead,
        meta: ObjectMeta | None,
        ours: bool,
        expected: Expected,
    ) -> web.StreamResponse:
        """A miss's answer from its fill once the head has come (serving.from_fill)."""
        observe.trace(request).uncacheable = not head.store
        status = of_fill(meta is not None)
        keyed = replace(req, entry_key=head.entry_key)
        return await serving.serve_fill(self.engine, request, keyed, fill, head, status, ours, expected)


def _reads(request: web.BaseRequest, fill: Fill, ours: bool, held: _Held) -> None:
    """The request is `fill`'s reader from now on, no longer that of the one it read before (if any); a fill it
    started is noted in `held`, one it joined counted as a collapsed wait."""
    now = fill.expecting.expect()
    for before in held.expected:
        before.release()
    held.expected[:] = [now]
    if ours:
        held.started.append(fill)
    else:
        metrics.collapsed(observe.trace(request).sources)


class _Held:
    """What a request holds of the fills it reads (EdgeHandler._cached): those it started, and its place as the reader
    of the one it reads until it reads it (proxy.expecting)."""

    __slots__ = ("expected", "started")

    def __init__(self) -> None:
        self.started: list[Fill] = []
        self.expected: list[Expected] = []

    def let_go(self) -> None:
        """The request has ended. A fill it started and then did not stream (another variant's answer,
        stale-if-error, a pass-through) must not wait for it: a private one would hold its origin connection for
        good."""
        for fill in self.started:
            fill.abandon()
        for one in self.expected:
            one.release()


def _max_forwards_reached(request: web.BaseRequest, headers: Headers) -> web.Response | None:
    """The node's own answer to an OPTIONS or TRACE whose Max-Forwards is 0 (core.maxforwards), once the request
    was let in, and to an `OPTIONS *`; None for any other request. (The fast path hands every method but GET and
    HEAD over to here.)"""
    version = f"{request.version.major}.{request.version.minor}"
    own = own_answer(request.method, request.raw_path, version, headers)
    if own is None:
        return None
    fields, body = own
    observe.mark(request, CacheStatus.ERROR)  # the node's own answer: nothing went forward
    detail = "options *" if request.raw_path == ASTERISK else "max-forwards"
    fields.append(("Cache-Status", cache_status_header(CacheStatus.ERROR, detail=detail)))
    return web.Response(status=200, body=body, headers=fields)
