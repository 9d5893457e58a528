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
from edgecache.core.headers import Headers, get_first
from edgecache.core.keepalive import KeepAlive
from edgecache.core.keys import without_params
from edgecache.core.status import MISSES, CacheStatus, miss_cause, with_fetched
from edgecache.errors import OriginError
from edgecache.metricturn import TurnBundle

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
    client: str | None = None  # the client's address (core.clientaddr); None: the socket's peer
    sources: metrics.Sources = field(default_factory=metrics.Sources)  # the served-bytes counter adds to it
    # A node of the cluster forwarded it for its viewer (a hop): that node serves the viewer and counts the bytes.
    for_peer: bool = False
    # The node's own prefetch (its internal socket): neither a viewer's request nor viewer bytes, logged as such.
    prefetch: bool = False
    # What a miss found, for its one cause (core.status.miss_cause), counted when the request ends.
    expired: bool = False  # a stored entry, stale
    evicted: bool = False  # the object, or a slice the answer needed, was stored here and evicted
    uncacheable: bool = False  # the origin's answer may not be stored
    changing: bool = False  # relayed unstored: each fill met a new version (core.churn)
    from_peer: bool = False  # a miss filled from the previous owner's cache (core.lookaside): upstream "peer"
    moved: bool = False  # that fill was a look-aside, not a spread copy's: the miss's cause is ring-moved
    look_aside: bool = False  # the owner asks this node's cache (core.lookaside)
    # The target as the access log names it once the request has a key (CacheKey.full_target: never a signed URL's
    # token); None: the raw target of a request refused before it had one.
    target: str | None = None
    # And the host (the key's, normalised: an absolute-form target's authority, not a Host field it overrides),
    # as the fast path logs it; None: the Host field as sent, for a request refused before it had a key.
    host: str | None = None


TRACE = web.RequestKey("edgecache_trace", Trace)


def trace(request: web.BaseRequest) -> Trace:
    t = request.get(TRACE)
    if t is None:
        t = request[TRACE] = new_trace()
    return t


def start(request: web.BaseRequest) -> None:
    metrics.SOURCES.set(trace(request).sources)  # this task answers this request now (one at a time)


def client(request: web.BaseRequest) -> str | None:
    """The request's client as the handler decided it (core.clientaddr), else the socket's peer."""
    t = trace(request)
    return t.client if t.client is not None else request.remote


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


def finish(request: web.BaseRequest, resp: web.StreamResponse | None, access: AccessLog, node: str) -> None:
    t = trace(request)
    metrics.SOURCES.set(None)
    code = resp.status if resp is not None else 0
    if t.look_aside and code == 504:
        return  # not held here: no viewer's request, and the asking node's miss (edgecache_peer_lookaside_total)
    if resp is not None:
        first_byte(request)  # a whole Response is sent right after this: its head leaves now
    # A slice lost between the handler's look and its read was fetched: the record says what was served.
    t.status = with_fetched(t.status, t.sources.origin + t.sources.peer > 0)
    count(t, request.method, code)
    nbytes = _body_bytes(request, resp, t)
    way = traced_way(t)
    served(t, way, nbytes)
    if access.enabled:
        headers = request.headers
        line = Line(
            client(request),
            request.method,
            t.host if t.host is not None else headers.get("Host", ""),
            t.target if t.target is not None else without_params(request.raw_path, access.never),
            headers.get("Range"),
            headers.get("User-Agent"),
            headers.get("Referer"),
            protocol(request.version),
        )
        log_line(access, t, line, code, nbytes, node, way)


@dataclass(slots=True)
class Line:
    """The request's part of an access-log line."""

    client: str | None
    method: str
    host: str
    path: str
    range: str | None
    user_agent: str | None = None
    referer: str | None = None
    protocol: str = "HTTP/1.1"

    @classmethod
    def of(
        cls,
        client: str | None,
        method: str,
        host: str,
        target: str,
        fields: Headers,
        keep_alive: KeepAlive,
        rng: str | None = None,
    ) -> Line:
        """The line of a request the fast path answered from its parsed fields (Range, User-Agent, Referer) and its
        version (`keep_alive`'s); `rng`: the Range it was answered for, when that is not among them (cut from a
        whole answer)."""
        rng = get_first(fields, "range") if rng is None else rng
        ua, referer = get_first(fields, "user-agent"), get_first(fields, "referer")
        return cls(client, method, host, target, rng, ua, referer, keep_alive.protocol)


# Client input: a longer User-Agent or Referer is cut here, so one line stays short whatever a client sends.
MAX_FIELD = 512


def clip(value: str | None) -> str | None:
    return value[:MAX_FIELD] if value is not None else None


def protocol(version: tuple[int, int]) -> str:
    return f"HTTP/{version[0]}.{version[1]}"


# Where an answer came from, by its cache status (upstream() tells a hit whose slices were partly fetched).
_UPSTREAM = {
    CacheStatus.HIT: "cache",
    CacheStatus.STALE: "cache",
    CacheStatus.REVALIDATED: "cache",  # the origin's 304 brought no byte
    CacheStatus.MISS: "origin",
    CacheStatus.EXPIRED: "origin",
    CacheStatus.PARTIAL: "cache+origin",
    CacheStatus.PASS: "origin",
    CacheStatus.PEER: "peer",
    CacheStatus.ERROR: "-",  # the node's own answer
}


def upstream(status: CacheStatus, sources: metrics.Sources) -> str:
    """Where an answer came from, for the access log and edgecache_site_served_bytes_total: "cache" (no byte
    fetched), "origin" (a miss, expired or pass: fetched for it), "peer" (forwarded to the owner), "cache+origin"
    (a stored entry served, some of its slices fetched from the origin meanwhile), "-" (an error of our own).

    A miss is "origin" whatever the tally says: its reader may take the slices its fill just stored from the
    memory tier, which the served-bytes counter calls memory.
    """
    way = _UPSTREAM[status]
    return "cache+origin" if way == "cache" and sources.origin else way


def traced_way(t: Trace) -> str:
    """upstream() of a traced answer, where a miss whose fill a peer's cache answered is that peer's: "peer"."""
    way = upstream(t.status, t.sources)
    return "peer" if t.from_peer and way == "origin" else way


def count(t: Trace, method: str, code: int) -> None:
    if t.prefetch:  # the node's own request, no viewer's: neither a request nor a miss of the viewers' counters
        _child(metrics.PREFETCH_REQUESTS, t.site, metrics.status_class(code), t.status.value).inc()
        return
    requests_counter(t.site, method, code, t.status).inc()
    if t.status in MISSES:  # once per request, whatever its path did before it ended
        cause = miss_cause(
            uncacheable=t.uncacheable,
            expired=t.expired,
            evicted=t.evicted,
            failover=t.failover,
            moved=t.moved,
            changing=t.changing,
        )
        misses_counter(t.site, cause.value).inc()


# Counters' children by label values, looked up once, not on every request (prometheus_client's labels() checks
# the values and takes a lock each time). Label values are site names from the config and enum values: bounded.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    child = _children.get((metric, labels))
    if child is None:
        child = _children[metric, labels] = metric.labels(*labels)
    return child


def misses_counter(site: str, cause: str) -> Any:
    return _child(metrics.MISSES, site, cause)


def peer_error(peer: str, exc: OriginError, malformed: bool = False) -> str:
    """Count a forward to `peer` that failed, by kind: "timeout", "connect" (refused: nothing was sent),
    "malformed" (its answer was not HTTP the parser reads, or went past a bound: proxy.nohead, proxy.answerbound),
    or "reset" (the connection broke before or during the answer); the kind, for the error answer."""
    malformed = malformed or exc.malformed
    kind = "malformed" if malformed else "timeout" if exc.timeout else "connect" if exc.refused else "reset"
    metrics.PEER_ERRORS.labels(peer, kind).inc()
    return kind


def served(t: Trace, way: str, nbytes: int) -> None:
    """Count an answer's bytes in edgecache_site_served_bytes_total: once per viewer, by the node it reached (a
    hop's bytes by the node that forwarded it), so cluster-wide sums are viewer egress; never a prefetch's (the
    node's own reads: edgecache_prefetch_bytes_total)."""
    if not t.for_peer and not t.prefetch:
        site_bytes(t.site, way).inc(nbytes)


def site_bytes(site: str, way: str) -> Any:
    """The served-bytes-by-site counter's child for these labels (site names come from the config)."""
    return _child(metrics.SITE_SERVED, site, way)


FETCHED = frozenset({CacheStatus.MISS, CacheStatus.EXPIRED})  # a fill's answers (proxy.coldmiss)


@dataclass(frozen=True, slots=True)
class Tally:
    """What the fast path counts of an answer, resolved once per (site, method, status class, cache status, upstream):
    `answer` adds the answer to the fast path's answers, the requests, the time to first byte, and its site bytes
    and bytes from memory, in one call (metricturn.TurnBundle); `site_bytes`, `memory` and `disk` alone, for an
    answer whose body goes out after its head (read from disk, or in parts)."""

    answer: TurnBundle
    site_bytes: Any
    memory: Any  # the served-bytes counters (metrics.BYTES_SERVED) of what it reads from memory and from disk
    disk: Any


_tallies: dict[tuple[str, str, int, CacheStatus, str], Tally] = {}


def tally(site: str, method: str, code: int, status: CacheStatus, way: str) -> Tally:
    """The fast path's Tally of an answer (`way`: observe.upstream's). A miss's bytes are the origin's wherever its
    fill has put them by the time they are sent (coldmiss), as the full handler counts them; a look-aside's, the
    previous owner's."""
    method = method if method in _METHODS else "other"  # a key of bounded values, as the requests counter's
    key = (site, method, code // 100, status, way)  # the code by its hundreds, as requests_counter keys it
    found = _tallies.get(key)
    if found is None:
        if status in FETCHED:
            memory = disk = metrics.BYTES_SERVED.labels("peer" if way == "peer" else "origin")
        else:
            memory, disk = metrics.BYTES_SERVED.labels("memory"), metrics.BYTES_SERVED.labels("disk")
        counted = (_child(metrics.FAST_PATH, "answered"), requests_counter(site, method, code, status))
        site_counter = site_bytes(site, way)
        bundle = TurnBundle(counted, _child(metrics.TTFB, status.value), (site_counter, memory.counter))
        found = _tallies[key] = Tally(bundle, site_counter, memory, disk)
    return found


# The request counter's children by what they are made of: every forward's end (proxy.relay) and every request the
# full handler or a pass counts looks one up, and the labels cost more to work out (the status class, the Enum's
# value: 0.67 µs) than one lookup by their parts (0.20 µs). Bounded as _children are: a method not in _METHODS is
# "other" before it is a key, and a code is keyed by its hundreds (codes with the same hundreds have the same
# metrics.status_class), so an upstream's odd codes add no keys.
_requests: dict[tuple[str, str, int, CacheStatus], Any] = {}


def requests_counter(site: str, method: str, code: int, status: CacheStatus) -> Any:
    """The request counter's child for these labels (a method not in _METHODS is counted as "other")."""
    method = method if method in _METHODS else "other"
    key = (site, method, code // 100, status)
    found = _requests.get(key)
    if found is None:
        found = _requests[key] = _child(metrics.REQUESTS, site, method, metrics.status_class(code), status.value)
    return found


def log_line(
    access: AccessLog,
    t: Trace,
    line: Line,
    code: int,
    nbytes: int,
    node: str,
    way: str,
    unreached: tuple[str, ...] = (),
) -> None:
    """One line, the same fields in the same order for the fast path's hits and for the full handler. `unreached`:
    the owners a fast-path forward of the request could not reach before it was decided again (relay.Retried),
    named first in upstream_addr, as the full handler's trace names them (owner.to_owner)."""
    addrs = (*unreached, *(a for a in t.sources.addrs if a not in unreached)) if unreached else t.sources.addrs
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
        "protocol": line.protocol,
        "user_agent": clip(line.user_agent),
        "referer": clip(without_params(line.referer, access.never)) if line.referer is not None else None,
        "node": node,
        "upstream": way,
        "upstream_addr": ", ".join(addrs) if addrs else None,
        "for_peer": t.for_peer,
        "prefetch": t.prefetch,
    }
    access.write(record)


def new_trace() -> Trace:
    return Trace(f"{_PID}-{next(_ids):x}")
