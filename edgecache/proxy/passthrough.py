"""Requests the cache does not answer: forwarded to the site's origin as they are, streamed back, never stored."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from aiohttp import web

from edgecache import metrics
from edgecache.core import churn
from edgecache.core.entry import vary_names
from edgecache.core.forward import pass_request, relayed_fields, unkeyed_fields
from edgecache.core.freshness import invalidates
from edgecache.core.headers import Headers, get_all
from edgecache.core.keys import BadTarget, make_key, varied
from edgecache.core.route import normalise_host
from edgecache.core.status import CacheStatus, MissCause, cache_status_header
from edgecache.errors import OriginError
from edgecache.proxy import observe
from edgecache.proxy.exact import ExactStreamResponse
from edgecache.proxy.fillhead import OVERTAKEN
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.origin import ClientBody, OriginClient, OriginResponse, read_chunks
from edgecache.proxy.respond import unknown_length
from edgecache.storage.store import Store

log = logging.getLogger(__name__)
_FROM_ORIGIN = metrics.BYTES_SERVED.labels("origin")


async def pass_through(
    request: web.BaseRequest,
    origin: OriginClient,
    req: FillRequest,
    status: CacheStatus,
    invalidate: tuple[Store, str] | None = None,
    extra: Headers = (),
    source: str = "origin",
    detail: str = "",
) -> web.StreamResponse:
    """Forward the request; with `invalidate` (store, host), entries the response invalidates are dropped
    before the client hears the response, so its next request cannot see them. `detail`: its Cache-Status's."""
    observe.mark(request, status)
    # What it relays is its upstream's (the origin's; a forward's the owner's, its status PEER): not a peer cache's,
    # though a peer's answered the fill before it (serving.peer_marks), which counted the origin's bytes as the peer's.
    observe.trace(request).from_peer = False
    sent = pass_request(request.method, req.key, req.headers, req.site.origin_host, req.client_ip, extra, origin.via)
    body = ClientBody(_continued(request), origin.settings.body_timeout) if request.body_exists else None
    started = time.monotonic()
    resp = await origin.request(req.site, sent.method, sent.target, sent.headers, body, passed=True)
    observe.trace(request).origin_ms = round((time.monotonic() - started) * 1000, 3)
    observe.trace(request).sources.asked(resp.addr)
    try:
        if invalidate is not None:
            await invalidate_after(invalidate[0], request.method, resp.status, req, resp.headers, invalidate[1])
        return await _relay(request, resp, cache_status_header(status, detail=detail), source)
    finally:
        resp.release()


async def relay_changing(
    request: web.BaseRequest, origin: OriginClient, req: FillRequest, step: churn.Next
) -> web.StreamResponse:
    """The answer to a request out of fills (core.churn: `step` RELAY, OVERTAKEN, SPENT): one origin request for what
    the client asked, relayed as it comes and never stored: the bytes of the one version that answer carries. A MISS,
    counted by its cause and told in its Cache-Status (relay_field)."""
    observe.mark(request, CacheStatus.MISS)
    t = observe.trace(request)
    field = relay_field(t, req, step)
    resp = await relayed_changing(origin, req, request.method, t)
    try:
        return await _relay(request, resp, field, "origin")
    finally:
        resp.release()


async def relayed_changing(origin: OriginClient, req: FillRequest, method: str, t: observe.Trace) -> OriginResponse:
    """The origin's answer to the relay of a request whose fills kept meeting new versions (core.churn), asked
    again with the fields it names when it varies on others than the client's (churn.misfit), for either path to
    relay (the fast path's: proxy.passing). `t`: the request's trace, whose origin_ms is the last request's."""
    vary = req.vary
    for _ in range(churn.RELAYS):
        unkeyed = unkeyed_fields(req.site.forward_fields, req.headers, vary)
        fields = varied(vary, req.headers)
        sent = churn.relay_request(method, req.key, fields, req.site.origin_host, req.headers, unkeyed, origin.via)
        started = time.monotonic()
        resp = await origin.request(req.site, sent.method, sent.target, sent.headers, passed=True)
        t.origin_ms = round((time.monotonic() - started) * 1000, 3)
        t.sources.asked(resp.addr)
        if (named := churn.misfit(vary_names(resp.headers), sent.headers, req.headers)) is None:
            return resp
        resp.release()
        vary = named
    raise OriginError("the object kept changing while being fetched, and varying on other fields", retryable=False)


def relay_field(t: observe.Trace, req: FillRequest, step: churn.Next) -> str:
    """The Cache-Status of a request relayed out of fills by core.churn's `step`, for either path (the fast path's:
    proxy.passing), its cause noted on its trace `t`: a MISS whose object kept changing (RELAY); or whose fills
    purges here kept overtaking (OVERTAKEN), the origin unchanged: said and counted as a fill's answer a purge
    overtook is (detail "invalidated", an answer not stored), never as changing; or whose tries were spent with
    neither (SPENT: detail "tries-spent"), counted as that answer too."""
    changing = step is churn.Next.RELAY
    t.changing, t.uncacheable = changing, not changing
    detail = MissCause.CHANGING.value if changing else OVERTAKEN if step is churn.Next.OVERTAKEN else step.value
    return cache_status_header(CacheStatus.MISS, detail=detail, found=req.found)


async def _relay(request: web.BaseRequest, resp: OriginResponse, status_field: str, source: str) -> web.StreamResponse:
    """The upstream's answer `resp`, streamed to the client as it comes (its end-to-end fields, this node's
    Cache-Status entry `status_field`); a body the upstream cuts is cut for the client too (its connection
    aborted), never ended as if whole. `source`: where the served bytes came from (origin, peer)."""
    served = _FROM_ORIGIN if source == "origin" else metrics.BYTES_SERVED.labels(source)
    out = ExactStreamResponse(status=resp.status, reason=resp.raw.reason)
    for k, v in relayed_fields(resp.headers, status_field):
        out.headers.add(k, v)
    if request.method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
        await out.prepare(request)
        return out
    if resp.raw.content_length is None:
        unknown_length(request, out)
    else:
        out.content_length = resp.raw.content_length
    await out.prepare(request)
    try:
        async for chunk in read_chunks(resp):
            served.inc(len(chunk))
            await observe.write(request, out, chunk)
    except OriginError as exc:
        log.warning("aborting pass-through of %s: %s", request.path, exc)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionAbortedError(str(exc)) from exc
    await out.write_eof()
    return out


async def _continued(request: web.BaseRequest) -> AsyncIterator[bytes]:
    """The request's body for the origin. A client that sent `Expect: 100-continue` waits for a 100 before it
    sends its body (RFC 9110 10.1.1): it is told to go on when the origin takes the first byte, so a request
    refused before then (no origin answering, an ACL) never makes it send its body."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


async def invalidate_after(
    store: Store, method: str, status: int, req: FillRequest, headers: Headers, host: str
) -> None:
    """RFC 9111 4.4: a non-error response to an unsafe method invalidates the target URI and the same-host
    Location and Content-Location."""
    if not invalidates(method, status):
        return
    targets = [req.target]
    for name in ("location", "content-location"):
        for value in get_all(headers, name):
            parts = urlsplit(value)
            if parts.netloc and normalise_host(parts.netloc) != host:
                continue  # another host's entries are not ours to drop on this response's word
            path = parts.path or "/"
            if not path.startswith("/"):
                path = req.key.path.rsplit("/", 1)[0] + "/" + path  # the query is no directory
            targets.append(path + (f"?{parts.query}" if parts.query else ""))
    for target in targets:
        try:
            key = make_key(req.site.name, host, target, req.site.key_query)
        except BadTarget:
            continue
        await store.invalidate(key.primary)
