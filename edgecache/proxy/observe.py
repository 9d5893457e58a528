"""What every request leaves behind: its metrics and its access log line.

The request path records what it decided in the request's Trace (site, cache status, origin time); this module
turns the trace into counters and one log line after the response, away from the decision code.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgecache import metrics
from edgecache.accesslog import AccessLog
from edgecache.core.status import CacheStatus

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_ids = itertools.count(1)
_PID = f"{os.getpid():x}"


@dataclass(slots=True)
class Trace:
    id: str
    t0: float = field(default_factory=time.monotonic)
    site: str = "-"
    status: CacheStatus = CacheStatus.ERROR
    origin_ms: float | None = None
    ttfb: float | None = None
    failover: bool = False  # served by a later owner because the first one is down
    body_bytes: int | None = None  # counted by streaming writers; None: a small body of known length


TRACE = web.RequestKey("edgecache_trace", Trace)


def trace(request: web.BaseRequest) -> Trace:
    t = request.get(TRACE)
    if t is None:
        t = request[TRACE] = new_trace()
    return t


def start(request: web.BaseRequest) -> None:
    trace(request)


def mark(request: web.BaseRequest, status: CacheStatus) -> None:
    trace(request).status = status


def first_byte(request: web.BaseRequest) -> None:
    """Called once the response head is sent."""
    head_sent(trace(request))


def head_sent(t: Trace) -> None:
    if t.ttfb is None:
        t.ttfb = time.monotonic() - t.t0
        metrics.TTFB.labels(t.status.value).observe(t.ttfb)


_stamp: tuple[int, str] = (0, "")
_requests: dict[tuple[str, str, str, str], Any] = {}


def _now_iso() -> str:
    """The local time to the second, formatted once a second rather than once a request."""
    global _stamp
    now = int(time.time())
    if _stamp[0] != now:
        _stamp = (now, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)))
    return _stamp[1]


def _body_bytes(request: web.BaseRequest, resp: web.StreamResponse | None, t: Trace) -> int:
    if t.body_bytes is not None:
        return t.body_bytes
    if resp is None or request.method == "HEAD":
        return 0
    return resp.content_length or 0


def sent(request: web.BaseRequest, n: int) -> None:
    t = trace(request)
    t.body_bytes = (t.body_bytes or 0) + n


# A client that stops reading holds a connection, not memory (writes wait for the socket to drain), but only
# for this long: then the connection is cut. Set per server from the config.
WRITE_TIMEOUT: contextvars.ContextVar[float] = contextvars.ContextVar("write_timeout", default=60.0)


async def write(request: web.BaseRequest, resp: web.StreamResponse, chunk: bytes | memoryview) -> None:
    """Send one chunk to a client that must take it within WRITE_TIMEOUT, or lose its connection."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT.get()):
            await resp.write(chunk)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        metrics.SLOW_CLIENTS.inc()
        raise ConnectionAbortedError("client did not read for the write timeout") from None
    sent(request, len(chunk))


def finish(request: web.BaseRequest, resp: web.StreamResponse | None, access: AccessLog) -> None:
    t = trace(request)
    code = resp.status if resp is not None else 0
    if resp is not None:
        first_byte(request)  # a whole Response is sent right after this: its head leaves now
    count(t, request.method, code)
    if access.enabled:
        headers = request.headers
        line = Line(request.remote, request.method, headers.get("Host", ""), request.raw_path, headers.get("Range"))
        log_line(access, t, line, code, _body_bytes(request, resp, t))


@dataclass(slots=True)
class Line:
    """The request's part of an access-log line."""

    client: str | None
    method: str
    host: str
    path: str
    range: str | None


def count(t: Trace, method: str, code: int) -> None:
    requests_counter(t.site, method, code, t.status).inc()


def requests_counter(site: str, method: str, code: int, status: CacheStatus) -> Any:
    """The request counter's child for these labels; looked up once, not on every request."""
    labels = (site, method if method in _METHODS else "other", metrics.status_class(code), status.value)
    counter = _requests.get(labels)
    if counter is None:
        counter = _requests[labels] = metrics.REQUESTS.labels(*labels)
    return counter


def log_line(access: AccessLog, t: Trace, line: Line, code: int, nbytes: int) -> None:
    record: dict[str, Any] = {
        "time": _now_iso(),
        "id": t.id,
        "client": line.client,
        "site": t.site,
        "method": line.method,
        "host": line.host,
        "path": line.path,
        "range": line.range,
        "status": code,
        "bytes": nbytes,
        "cache": t.status.value,
        "origin_ms": t.origin_ms,
        "ttfb_ms": round((t.ttfb or 0.0) * 1000, 3),
        "ms": round((time.monotonic() - t.t0) * 1000, 3),
    }
    access.write(record)


def new_trace() -> Trace:
    return Trace(f"{_PID}-{next(_ids):x}")
