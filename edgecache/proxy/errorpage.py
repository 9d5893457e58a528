"""The answer edgecache writes itself when it cannot serve a request: a status, one short line, Cache-Status.

One rule for both ways it is written: aiohttp's Response (error_response) and the fast path's encoder (encode.error).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11

from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.errors import Busy, OriginError


def error_page(status: int, reason: str, retry_after: int = 0) -> tuple[list[tuple[str, str]], bytes]:
    """The fields (besides Content-Type and Content-Length) and the body of an error answer; `retry_after`: the
    seconds a 429's Retry-After says (the rate limiter's), 1 when not given."""
    # One short line: an origin's garbage quoted in an error message must not reach the client at length.
    reason = reason.splitlines()[0][:200] if reason else "error"
    fields = [("Cache-Status", cache_status_header(CacheStatus.ERROR, detail=reason[:80].replace('"', "'")))]
    if status in (429, 503):
        fields.append(("Retry-After", str(retry_after or 1)))
    return fields, (reason + "\n").encode("utf-8")


def peer_failed(kind: str, timeout: bool) -> tuple[int, str]:
    """The status and reason when the owner failed and no other node may be asked: the peer's failure, never
    reported as the origin's, and by its kind only: which node failed, its address and what it said are the
    cluster's internals, for the log (the callers log them), never for a viewer."""
    return (504 if timeout else 502), f"peer failed ({kind})"


def origin_failed(exc: OriginError) -> tuple[int, str, bool]:
    """The status and reason when a request's origin fetch failed with nothing to stand in, and whether the failure
    is still to be counted against the origin (timeouts, connects and malformed answers were, where they happened:
    the origin client, proxy.nohead).
    503 when the node itself could not take the answer in (Busy), never reported as the origin's; a peer's failure
    met by a fill that read its body (OriginError.peer_kind, counted there) as peer_failed says it; else
    OriginError.status."""
    if isinstance(exc, Busy):
        return 503, exc.reason, False
    if exc.peer_kind is not None:
        return (*peer_failed(exc.peer_kind, exc.timeout), False)
    return exc.status, f"origin failed: {exc.reason}", not (exc.timeout or exc.connect or exc.malformed)


def error_response(status: int, reason: str, retry_after: int = 0) -> web.Response:
    fields, body = error_page(status, reason, retry_after)
    return web.Response(status=status, body=body, content_type="text/plain", charset="utf-8", headers=dict(fields))


class _InHttp11(web.Response):
    """An answer whose head is HTTP/1.1's whatever version the request named. aiohttp's status line (and its
    Connection field) follow the request's version; to one the node does not speak (HTTP/2.0, HTTP/0.9), a server
    answers in the highest it does (RFC 9110 6.2, RFC 9112 2.3: never in a version it does not conform to)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        # What aiohttp's writer reads, a property cached (reified) in the request's _cache; the request is answered
        # and done with (its log line, observe.finish, named the version it asked for).
        request._cache["version"] = HttpVersion11
        return await super().prepare(request)


def in_http11(status: int, reason: str) -> web.Response:
    """error_response in HTTP/1.1, and the close: the answer to a request of a version not spoken here, as
    encode.error writes it with KeepAlive.CLOSE (route.unversioned)."""
    fields, body = error_page(status, reason)
    resp = _InHttp11(status=status, body=body, content_type="text/plain", charset="utf-8", headers=dict(fields))
    resp.force_close()
    return resp
