"""Writing responses: headers from stored metadata, the client's Range applied, bodies streamed from the engine."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

from aiohttp import web

from edgecache.core import ranges
from edgecache.core.conditional import Verdict, judge
from edgecache.core.entry import ObjectMeta
from edgecache.core.forward import VIA
from edgecache.core.headers import Headers, get_all, get_first
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.errors import OriginError
from edgecache.proxy import observe
from edgecache.proxy.exact import ExactResponse, ExactStreamResponse

log = logging.getLogger(__name__)

# Fields recomputed for every response rather than replayed from the stored ones.
RECOMPUTED = frozenset({"age", "via", "cache-status", "content-length", "content-range", "accept-ranges"})
# Kept on a 304 (RFC 9110 15.4.5): the fields a 200 would have carried that describe validators and caching.
NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "last-modified"}
)


def base_headers(meta_headers: Headers, age: int, cache_status: str) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in meta_headers if k.lower() not in RECOMPUTED]
    via = ", ".join(get_all(meta_headers, "via"))
    out.append(("Via", f"{via}, {VIA}" if via else VIA))
    out.append(("Age", str(max(0, age))))
    prior = ", ".join(get_all(meta_headers, "cache-status"))
    out.append(("Cache-Status", f"{prior}, {cache_status}" if prior else cache_status))
    return out


def _response(status: int, headers: list[tuple[str, str]]) -> web.StreamResponse:
    resp = ExactStreamResponse(status=status)
    for k, v in headers:
        resp.headers.add(k, v)
    return resp


def plan(method: str, request: Headers, meta: ObjectMeta) -> tuple[int, ranges.RangeResult]:
    """The status to answer with and the range to send, from the client's conditions and Range."""
    if meta.status == 200 or meta.status == 206:
        verdict = judge(request, meta.etag, meta.last_modified, get_first(meta.headers, "date"))
        if verdict.failed:
            return 412, ranges.NoRange()
        if verdict.not_modified:
            return 304, ranges.NoRange()
        if get_first(request, "range") is not None and ranges_apply(request, meta, verdict):
            result = ranges.resolve(get_first(request, "range"), meta.length)
            if isinstance(result, ranges.Unsatisfiable):
                return 416, result
            if isinstance(result, ranges.Single | ranges.Multi):
                return 206, result
        return 200, ranges.NoRange()
    return meta.status, ranges.NoRange()


def ranges_apply(request: Headers, meta: ObjectMeta, verdict: Verdict | None = None) -> bool:
    """May a Range of the request (or one it would have: Decider._cut asks of the head without it) be answered with
    a part of the stored representation? Not when its If-Range does not allow it (RFC 9110 13.1.5), nor when its
    If-Match or If-None-Match is unreadable (core.conditional): the whole representation, then. `verdict`: the
    request's conditions judged already (plan)."""
    if (verdict or judge(request, meta.etag, meta.last_modified)).unreadable:
        return False
    return ranges.if_range_allows(
        get_first(request, "if-range"), meta.etag, meta.last_modified, get_first(meta.headers, "date")
    )


# The most slices of an answer checked before its head is sent (answer_slices): a longer answer's later slices, if
# fetched, are still told by the served-bytes record when the request ends (observe.finish).
MAX_CHECKED = 1024


def _body_parts(method: str, request: Headers, meta: ObjectMeta) -> tuple[ranges.ByteRange, ...]:
    """The byte ranges the body of the answer to this request reads; none for a HEAD, a 304, 412 or 416, or an
    empty body."""
    status, rng = plan(method, request, meta)
    if method == "HEAD" or status in (304, 412) or isinstance(rng, ranges.Unsatisfiable) or meta.length <= 0:
        return ()
    if isinstance(rng, ranges.Multi):
        return rng.ranges
    if isinstance(rng, ranges.Single):
        return (rng.range,)
    return (ranges.ByteRange(0, meta.length - 1),)


def answer_span(method: str, request: Headers, meta: ObjectMeta, slice_size: int) -> tuple[int, int] | None:
    """The first and the last slice the body of the answer to this request reads (None: it reads none)."""
    parts = _body_parts(method, request, meta)
    if not parts:
        return None
    return min(p.first for p in parts) // slice_size, max(p.last for p in parts) // slice_size


def answer_slices(method: str, request: Headers, meta: ObjectMeta, slice_size: int) -> list[int]:
    """The slices the body of the answer to this request reads, in order, the first MAX_CHECKED of them; none for
    a HEAD, a 304, 412 or 416, or an empty body."""
    parts = _body_parts(method, request, meta)
    found: dict[int, None] = {}
    for part in parts:
        for index in ranges.slice_indices(part, slice_size)[: MAX_CHECKED - len(found)]:
            found[index] = None
    return list(found)


def probed_slices(
    method: str, request: Headers, meta: ObjectMeta, slice_size: int, needed: list[int], missing: list[int]
) -> list[tuple[int, int]]:
    """Of the `missing` slices of an answer (of answer_slices' `needed`), those whose first byte is read before its
    head is sent (serving.first_fetched, which skips one a fill it read already brings), each with the last slice a
    fill started for it may run to: the first; for a multipart Range, every missing slice of each part, with its
    part's last (as reading.read_range would fetch it). A part's slices were fetched only once the parts before it
    had gone out: one that came as a new version then cut the answer after them (an object changing at every
    request, tests/e2e/test_churn.py); and so was a part's later slice, after its first (test_multipart_versions).
    The fills that takes are bounded: past core.fillcost.MAX_PROBED_FILLS, the request is passed through."""
    _, rng = plan(method, request, meta)
    if not isinstance(rng, ranges.Multi):
        return [(missing[0], needed[-1])]
    absent, found = set(missing), dict[int, int]()
    for part in rng.ranges:
        for index in ranges.slice_indices(part, slice_size)[:MAX_CHECKED]:
            if index in absent and index not in found:
                found[index] = part.last // slice_size
    return list(found.items())


Body = AsyncIterator[bytes | memoryview]
# Bodies up to this size, all in memory, go out as one buffer; larger ones stream, so a client that stops
# reading holds at most a socket's worth of them and meets the write timeout.
ONE_BUFFER_MAX = 256 * 1024


# Gives the bytes first..last (inclusive) of the object being served.
Reader = Callable[[int, int], Body]


class Planned(NamedTuple):
    """The answer to a request from a stored entry, decided once for both paths (send() here, and the fast path's
    lookup.find_hit): its status and fields, Content-Length last where it has one, and its body: the object's bytes
    first..last (none when first > last, as for a HEAD), the node's own short text, or a multipart Range's parts."""

    status: int
    fields: list[tuple[str, str]]
    first: int
    last: int
    body: bytes = b""
    multi: ranges.Multi | None = None
    layout: ranges.MultipartLayout | None = None  # a multipart answer's parts, once its boundary is chosen


def multipart(planned: Planned, meta: ObjectMeta, boundary: str) -> Planned:
    """A multipart Range's answer (RFC 9110 14.6) with its `boundary`: the parts laid out, and the fields that
    name them, its type and length last. Each answer gets a boundary of its own (not remembered with its head),
    so none is ever predictable from another."""
    assert planned.multi is not None
    ctype = get_first(meta.headers, "content-type")
    layout = ranges.multipart_layout(planned.multi.ranges, meta.length, ctype, boundary)
    keep = [(k, v) for k, v in planned.fields if k.lower() != "content-type"]
    fields = [*keep, ("Content-Type", layout.content_type), ("Content-Length", str(layout.content_length))]
    return planned._replace(fields=fields, layout=layout)


def new_boundary() -> str:
    return secrets.token_hex(12)


def plan_answer(method: str, request: Headers, meta: ObjectMeta, base: list[tuple[str, str]]) -> Planned:
    """The answer for `meta`'s entry, given the client's conditions and Range; `base`: base_headers() for it."""
    status, rng = plan(method, request, meta)
    if status == 304:
        kept = [(k, v) for k, v in base if k.lower() in NOT_MODIFIED_FIELDS or k in ("Via", "Age", "Cache-Status")]
        return Planned(304, kept, 0, -1)
    if status == 412:
        return _small(method, 412, base, PRECONDITION_FAILED)
    if meta.status == 200:
        base = [*base, ("Accept-Ranges", "bytes")]
    if isinstance(rng, ranges.Unsatisfiable):
        return _small(method, 416, [*base, ("Content-Range", f"bytes */{meta.length}")], NOT_SATISFIABLE)
    if isinstance(rng, ranges.Multi):
        return Planned(206, base, 0, -1, multi=rng)
    if isinstance(rng, ranges.Single):
        first, last = rng.range.first, rng.range.last
        base = [*base, ("Content-Range", ranges.format_content_range(rng.range, meta.length))]
    else:
        first, last = 0, meta.length - 1
        if (stored_range := get_first(meta.headers, "content-range")) is not None:
            base = [*base, ("Content-Range", stored_range)]  # the origin's own field on a whole response
    fields = [*base, ("Content-Length", str(max(0, last - first + 1)))]
    return Planned(status, fields, first, last if method == "GET" else first - 1)


# The node's own short bodies for a 412 and a 416.
PRECONDITION_FAILED = b"precondition failed\n"
NOT_SATISFIABLE = b"range not satisfiable\n"


def past_the_end(method: str, origin_fields: Headers, length: int) -> Planned:
    """The 416 a miss gets when its fill's 416 told a `length` the client's Range is past the end of
    (fillhead.RangeMismatch.unsatisfiable_for), from that 416's `origin_fields`: the full handler's
    (serving.past_the_end) and the fast path's (proxy.pastend). Nothing was stored: Cache-Status a plain miss."""
    base = [*base_headers(origin_fields, 0, cache_status_header(CacheStatus.MISS)), ("Accept-Ranges", "bytes")]
    return _small(method, 416, [*base, ("Content-Range", f"bytes */{length}")], NOT_SATISFIABLE)


async def send_small(request: web.BaseRequest, planned: Planned) -> web.StreamResponse:
    """An answer with the node's own short body (or none), all of it known."""
    resp = _response(planned.status, planned.fields)
    await resp.prepare(request)
    if planned.body:
        await resp.write(planned.body)
    return resp


def _small(method: str, status: int, base: list[tuple[str, str]], body: bytes) -> Planned:
    """An answer whose body is the node's own text, not the object's: no field that describes the object's
    representation, then its type and length (a HEAD's too, with no body)."""
    drop = ("content-type", "content-encoding", "etag", "last-modified")
    keep = [(k, v) for k, v in base if k.lower() not in drop]
    fields = [*keep, ("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    return Planned(status, fields, 0, -1, body if method == "GET" else b"")


async def send(
    request: web.BaseRequest,
    request_headers: Headers,
    meta: ObjectMeta,
    headers: list[tuple[str, str]],
    read: Reader,
    in_memory: Callable[[int, int], bytes | None] | None = None,
) -> web.StreamResponse:
    """Answer `request` for the object `meta` describes; `headers` are base_headers() for it.

    `in_memory` gives the bytes at once when every slice is in the memory tier: the hit is then answered with one
    buffer (head and body in one write), without the streaming machinery.
    """
    planned = plan_answer(request.method, request_headers, meta, headers)
    if planned.multi is not None:
        return await _send_multi(request, multipart(planned, meta, new_boundary()), read)
    first, last = planned.first, planned.last
    if last < first:  # no bytes of the object: a HEAD, a 304, or the node's own text
        resp = _response(planned.status, planned.fields)
        await resp.prepare(request)
        if planned.body:
            await resp.write(planned.body)
        return resp
    small = last - first + 1 <= ONE_BUFFER_MAX
    if in_memory is not None and small and (body := in_memory(first, last)) is not None:
        whole = ExactResponse(status=planned.status, body=body)
        for k, v in planned.fields[:-1]:  # its Content-Length is the body's
            whole.headers.add(k, v)
        return whole
    resp = _response(planned.status, planned.fields)
    await _stream(request, resp, read(first, last))
    return resp


def unknown_length(request: web.BaseRequest, resp: web.StreamResponse) -> None:
    """Frame a body of unknown length as the fast path frames it for the client's version
    (KeepAlive.unknown_length): chunked for HTTP/1.1; for HTTP/1.0, which knows no chunks, sent as it comes and
    ended by the close (aiohttp refuses to chunk it, and would keep the connection open)."""
    chunked, after = KeepAlive.of(request.version.minor, request.keep_alive).unknown_length()
    if chunked:
        resp.enable_chunked_encoding()
    elif not after.persists:
        resp.force_close()


async def send_stream(
    request: web.BaseRequest, status: int, headers: list[tuple[str, str]], body: Body, length: int | None
) -> web.StreamResponse:
    """A body that cannot be ranged or conditioned (uncacheable, or of unknown length), sent as it comes. A HEAD's
    answer, a 204's or a 304's has no body to frame (encode.frame's `empty`): its connection is kept whatever the
    client's version."""
    resp = _response(status, headers)
    empty = request.method == "HEAD" or status in (204, 304)
    if length is not None:
        resp.content_length = length
    elif not empty:
        unknown_length(request, resp)
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp
    await _stream(request, resp, body)
    return resp


async def _send_multi(request: web.BaseRequest, planned: Planned, read: Reader) -> web.StreamResponse:
    layout = planned.layout
    assert layout is not None
    resp = _response(206, planned.fields[:-1])
    resp.content_length = layout.content_length
    if request.method == "HEAD":
        await resp.prepare(request)
        return resp

    async def body() -> Body:
        for preamble, part in layout.parts:
            chunks = read(part.first, part.last)
            # A part's first bytes before its preamble: a fill that fails the first part fails the answer before its
            # head is sent (_stream), and is answered as such (502/504), not with a 206 cut after the preamble.
            first = await anext(chunks, None)
            yield preamble
            if first is not None:
                yield first
            async for chunk in chunks:
                yield chunk
        yield layout.epilogue

    await _stream(request, resp, body())
    return resp


async def _stream(request: web.BaseRequest, resp: web.StreamResponse, body: Body) -> None:
    """Send headers once the first bytes are in hand, then the rest; an origin failure mid-body aborts the
    connection so the client sees a short response, never wrong or padded bytes."""
    first = await anext(body, None)  # errors here surface before any byte is sent, so the caller may retry
    await resp.prepare(request)
    observe.first_byte(request)
    try:
        if first is not None:
            await observe.write(request, resp, first)
        async for chunk in body:
            await observe.write(request, resp, chunk)
    except OriginError as exc:
        # The bytes written so far (aiohttp's body_length is set only once the body has ended: it said 0 here).
        sent = observe.trace(request).body_bytes or 0
        log.warning("aborting response to %s after %d body bytes: %s", request.path, sent, exc)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionAbortedError(str(exc)) from exc
    await resp.write_eof()
