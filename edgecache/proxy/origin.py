"""The origin client: one pooled aiohttp session per process, bounded failover across a site's origins."""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_middlewares import ClientHandlerType, ClientMiddlewareType
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from edgecache import metrics
from edgecache.config import Config, OriginSettings, Site
from edgecache.core.forward import VIA, via_sent
from edgecache.core.headers import Headers, as_sent
from edgecache.errors import ClientError, OriginError, PeerWithheld
from edgecache.proxy import answerbound, nohead, observe
from edgecache.proxy.shares import Shares, share

log = logging.getLogger(__name__)

# The site a request on a pool is for, and the most connections of the pool it may hold (OriginClient.request):
# aiohttp asks its pool for a connection in the task that sends the request, and passes nothing else down to it.
_SHARE: ContextVar[tuple[str, int] | None] = ContextVar("origin_share", default=None)


@dataclass(slots=True)
class OriginResponse:
    status: int
    headers: Headers
    raw: aiohttp.ClientResponse
    origin: str
    site: str = "-"
    peer: str | None = None  # the cluster member it came from: its bytes are peer bytes, not origin bytes
    # Whom it was asked of, as the access log's upstream_addr names them: host:port, after any that failed first.
    addr: str = ""
    _aside: tuple[_Pool, ResponseHandler] | None = None  # its connection, while set aside (set_aside)

    def release(self) -> None:
        self.raw.release()

    def close(self) -> None:
        self.raw.close()

    def set_aside(self, aside: bool) -> None:
        """The fill reading this answer waits for the one client it is for (aside), or goes on: its connection does
        not count against its pool's limit meanwhile (_Pool.set_aside). aiohttp may release the connection while
        it is set aside (the whole body has arrived): it is then no longer this answer's to count."""
        conn = self.raw.connection
        if aside:
            if conn is not None and isinstance(conn._connector, _Pool) and conn.protocol is not None:
                self._aside = (conn._connector, conn.protocol)
                conn._connector.set_aside(conn.protocol, True)
        elif self._aside is not None:
            (pool, proto), self._aside = self._aside, None
            pool.set_aside(proto, False, held=conn is not None and conn.protocol is proto)


class _Handler(ResponseHandler):
    """aiohttp's connection protocol, but a body the parser finds malformed fails its reader, the read timeout runs
    on after an interim (1xx) answer, and it runs while the origin takes none of the request body we send.

    aiohttp's parser, failing mid-body (a chunk size that is not hex, chunk data longer than its size), drops the
    body's reader and gives the error to the connection only, cancelling the read timeout: a reader waiting for
    more of the body waited forever, and a fill with it, which every later request of the object joined. And
    aiohttp stops the read timeout after every answer without a body, an interim one too: an origin that sent
    103 Early Hints and then nothing held its fill the same way. aiohttp starts the read timeout only once the
    request body is sent: an origin that took a pass-through's head and read no further held it, its client and a
    connection of the body pool for good.
    """

    _interim = False  # the last answer parsed was an interim one: the final one is still to come
    _taking = False  # the read timeout runs because the origin stopped taking the request body

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._read_timeout_handle is None:  # no answer being read: the origin's turn is to take our bytes
            self._taking = True
            self._reschedule_timeout()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._taking:  # it took some: the body's pace is its client's now (ClientBody)
            self._taking = False
            self._drop_timeout()

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        super().feed_data(data, size)
        code = data[0].code
        self._interim = 100 <= code < 200 and code != 101

    def data_received(self, data: bytes) -> None:
        body = self._payload
        self._interim = self._taking = False  # an answer comes: the read timeout is aiohttp's again
        super().data_received(data)
        if self._interim:
            self._reschedule_timeout()
        error = self.exception()
        if error is not None and body is not None and not body.is_eof() and body.exception() is None:
            body.set_exception(aiohttp.ClientPayloadError(f"Response payload is malformed: {error}"))


class _Pool(aiohttp.TCPConnector):
    """aiohttp's pool, but a connection that received bytes while idle is closed, never reused, and each site holds
    at most its share of the connections (proxy.shares).

    aiohttp parses what an idle connection receives and keeps it as a finished answer, which the next request sent
    on that connection reads as its own: an origin's stray answer (a bug, or a proxy's) was stored under the next
    URL asked, and each URL after it under the answer of the one before, until the connection closed. Its
    connections speak _Handler.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        handler: type[ResponseHandler] = _Handler
        self._factory = functools.partial(handler, loop=self._loop)
        self._aside: set[ResponseHandler] = set()  # acquired, not counted against the limit (set_aside)
        self.shares = Shares()
        self._site_of: dict[ResponseHandler, str] = {}  # acquired for a site: given back to its share on release

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        """A connection once the request's site may take one (within its share), then as aiohttp gives them; the
        wait for both within the connect timeout."""
        asked = _SHARE.get()
        if asked is None:
            return await super().connect(req, traces, timeout)
        site, most = asked
        started = self._loop.time()
        await self.shares.take(site, most, timeout.connect or 0.0)
        try:
            if timeout.connect:  # what is left of it (aiohttp takes 0 for no timeout at all)
                left = max(0.001, timeout.connect - (self._loop.time() - started))
                timeout = aiohttp.ClientTimeout(
                    total=timeout.total,
                    connect=left,
                    sock_read=timeout.sock_read,
                    sock_connect=timeout.sock_connect,
                    ceil_threshold=timeout.ceil_threshold,
                )
            conn = await super().connect(req, traces, timeout)
        except BaseException:
            self.shares.give(site)
            raise
        assert conn.protocol is not None
        self._site_of[conn.protocol] = site
        return conn

    def _release_acquired(self, key: ConnectionKey, proto: ResponseHandler) -> None:
        site = self._site_of.pop(proto, None)
        if proto in self._aside:  # released while set aside: its share was given back then, and it is no longer
            self._aside.discard(proto)  # its answer's to count (it may be another request's from the idle pool)
        elif site is not None:
            self.shares.give(site)
        super()._release_acquired(key, proto)

    def set_aside(self, proto: ResponseHandler, aside: bool, held: bool = True) -> None:
        """A fill whose answer only its one client may read (private) reads the origin as that client reads: a
        client that stops reading holds the connection until client_write_timeout, and as many of them as the
        limit took every connection fills use (each cold miss of every site then waited for one: a 504). While it
        waits for its client (aside) it does not count against the limit, and a waiter takes its place; it counts
        again once it goes on. Those set aside are bounded by the clients' connections (server.max_connections),
        as a relay's paused connections to a peer are (PeerPool.stall)."""
        site = self._site_of.get(proto)
        if aside:
            if proto in self._acquired:
                self._acquired.discard(proto)
                self._aside.add(proto)
                if site is not None:
                    self.shares.give(site)
                self._release_waiter()
        elif proto in self._aside:
            self._aside.discard(proto)
            if held:  # else released meanwhile: in the idle pool, or another request's by now
                self._acquired.add(proto)
                if site is not None:
                    self.shares.add(site)

    def _close(self, *, abort_ssl: bool = False) -> list[Awaitable[object]]:
        self._acquired |= self._aside  # closed with the others
        self._aside.clear()
        self._site_of.clear()
        return super()._close(abort_ssl=abort_ssl)

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        # aiohttp takes the oldest idle connection (the left end): only those that would be taken are looked at.
        conns = self._conns.get(key)
        while conns and conns[0][0].should_close:
            proto = conns.popleft()[0]
            transport = proto.transport
            proto.close()
            if key.is_ssl and not self._cleanup_closed_disabled:  # as aiohttp's own _get: TLS is aborted later
                self._cleanup_closed_transports.append(transport)
        if conns is not None and not conns:
            del self._conns[key]
        return await super()._get(key, traces)


class OriginClient:
    """Three pools, so that what a client paces can hold only its own: requests with a body (origin.body_connections:
    clients that send their bodies slowly, or stop), passes (their answers are read as fast as their clients read:
    as many as origin.max_connections), and fills, which read at the origin's pace whoever waits. A client that
    stops reading a pass never keeps a fill from a connection: cached GETs and fills always find one."""

    def __init__(self, settings: OriginSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._bodies: aiohttp.ClientSession | None = None
        self._passes: aiohttp.ClientSession | None = None
        self.peer: str | None = None  # set on a to_peer() view: what it sends goes to this cluster member
        self._judged: tuple[ClientMiddlewareType, ...] = ()  # a to_peer() view's check before each attempt
        self.sites = 1  # how many sites the node serves (set at start and on reload): their shares (proxy.shares)
        # This node's name in what it sends (loop_token(), set by server.open_node): a request back is a loop.
        self.loop_token = ""

    def to_peer(self, member_id: str, withheld: Callable[[], bool] | None = None) -> OriginClient:
        """The same pools, for a forward to a cluster member: its request and bytes are counted as that peer's
        (edgecache_peer_forwarded_*), never as origin traffic, and its failures are the caller's to count.

        `withheld` is asked before every attempt: the first, and the one aiohttp makes again inside the same call
        when a GET's or HEAD's connection drops before any answer (a kept-alive one the peer had closed). True: the
        attempt is not sent, and PeerWithheld is raised (the peer may hold what a purge applied here since
        removed). aiohttp runs a request's middlewares on each attempt: the one place both are judged by one rule."""
        view = copy.copy(self)
        view.peer = member_id
        if withheld is not None:

            async def judged(req: aiohttp.ClientRequest, send: ClientHandlerType) -> aiohttp.ClientResponse:
                if withheld():
                    raise PeerWithheld(f"peer {member_id} may hold what a purge applied here removed")
                return await send(req)

            view._judged = (judged,)
        return view

    @property
    def via(self) -> str:
        """The Via of this node's fills and passes (core.forward.via_sent), which core.admit.looped looks for; a
        forward's to a peer (a to_peer view) is VIA alone, as the fast path's relay sends it (proxy.relay): a peer
        that does not honour the forward's hop (clocks further apart than hop.MAX_SKEW) takes it for a client's,
        as a hop's refusal means, never for a request come back to the edge through an origin (508)."""
        return via_sent(self.loop_token) if self.peer is None else VIA

    @property
    def _who(self) -> str:
        return "origin" if self.peer is None else f"peer {self.peer}"

    def _named(self, site: Site, base: str) -> str:
        """Who failed, as a client's answer says it: for an origin, its site, never its address (internal: a viewer
        must not learn it; the log names it); a peer's address, as the fast path's relay (proxy.peerpool) names it."""
        return f"site {site.name}" if self.peer is None else base

    async def start(self) -> None:
        self._session = self._pool(self.settings.max_connections)
        self._bodies = self._pool(self.settings.body_connections)
        self._passes = self._pool(self.settings.max_connections)

    def _pool(self, limit: int) -> aiohttp.ClientSession:
        connector = _Pool(limit=limit, limit_per_host=0, ttl_dns_cache=60, enable_cleanup_closed=True)
        # connect: also the longest a request waits for a free connection of its pool.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout
        )
        # Bodies are stored exactly as the origin encoded them: never decompress, never add our own fields.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        for session in (self._session, self._bodies, self._passes):
            if session is not None:
                await session.close()
        self._session = self._bodies = self._passes = None

    async def request(
        self,
        site: Site,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | bytes | None = None,
        passed: bool = False,
    ) -> OriginResponse:
        """Send to the site's origins in order; the next one is tried on a connection error, timeout or 5xx.
        `passed`: the answer goes to one client as it reads it (a pass), on the pool of passes.

        A request with a body is never retried: it may already have had its effect. A ClientBody that stalls ends
        the request with ClientError(408); its origin connection is closed, not reused. The site holds at most its
        share of the pool's connections (proxy.shares).
        """
        assert self._session is not None, "OriginClient.start() not called"
        assert self._bodies is not None
        assert self._passes is not None
        session = self._bodies if body is not None else self._passes if passed else self._session
        pool = session.connector
        assert isinstance(pool, _Pool)
        asked = _SHARE.set((site.name, share(pool.limit, self.sites, site.origin_connections)))
        try:
            return await self._send(site, session, method, target, headers, body)
        finally:
            _SHARE.reset(asked)

    async def _send(
        self,
        site: Site,
        session: aiohttp.ClientSession,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | bytes | None,
    ) -> OriginResponse:
        origins = site.origins if body is None else site.origins[:1]
        paced = body if isinstance(body, ClientBody) else None
        last_error: OriginError | None = None
        head_within = self.settings.connect_timeout + self.settings.read_timeout
        tried: list[str] = []
        for i, base in enumerate(origins):
            started = time.monotonic()
            tried.append(address(base))
            try:
                # sock_read restarts with each read: a head sent a byte at a time would hold the request for as
                # long as the origin went on. Without a body to send, the head is whole within both timeouts.
                async with asyncio.timeout(None if body is not None else head_within):
                    raw = await session.request(
                        method,
                        URL(base + target, encoded=True),  # as the key has it: yarl would re-encode it otherwise
                        headers=CIMultiDict(headers),
                        data=body,
                        allow_redirects=False,
                        compress=None,
                        chunked=None,
                        middlewares=self._judged,
                    )
                nohead.refuse_spaced(raw)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                _raise_if_stalled(paced, exc)
                last_error = nohead.failure(site.name, base, exc, self.peer, self._named(site, base))
                continue
            self._count(site.name, raw.status, time.monotonic() - started)
            if (
                unreadable := _unreadable(self._who, base, raw, self._named(site, base), self.peer is None)
            ) is not None:
                last_error = unreadable
                continue
            if raw.status >= 500 and i < len(origins) - 1:
                log.info("origin %s answered %d, trying the next origin", base, raw.status)
                raw.release()
                continue
            return OriginResponse(
                raw.status, as_sent(raw.raw_headers), raw, base, site.name, self.peer, ", ".join(tried)
            )
        assert last_error is not None
        last_error.tried = ", ".join(tried)
        raise last_error

    def _count(self, site: str, status: int, took: float) -> None:
        if self.peer is not None:
            metrics.PEER_FORWARDED.labels(self.peer, site).inc()
            metrics.PEER_LATENCY.labels(self.peer).observe(took)
            return
        metrics.ORIGIN_LATENCY.labels(site).observe(took)
        metrics.ORIGIN_REQUESTS.labels(site, metrics.status_class(status)).inc()


def address(base: str) -> str:
    """An origin's (or peer's) base URL as the access log names it, as nginx's $upstream_addr does: host:port, the
    port told when the URL leaves it out; a name as configured, not resolved."""
    parts = urlsplit(base)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unreadable(who: str, base: str, raw: aiohttp.ClientResponse, named: str, origin: bool) -> OriginError | None:
    """The error of an answer whose bytes cannot be taken as its body (None for any other), its connection closed:
    a 101, the one interim answer aiohttp does not read past (nothing sent to an origin or a peer asks to switch
    protocols: Upgrade is hop-by-hop; relayed, it left the client's connection open and idle for good); and a
    transfer coding other than chunked (RFC 9112 6.1), which aiohttp, never decompressing, leaves applied: the
    coded bytes were stored and served as the object's, with nothing saying so; and an origin's (`origin`) head
    over what a node passes on to its peers (answerbound.origin_head). `named`: who failed, as the answer says it
    (OriginClient._named); the log names `base`."""
    codings = ", ".join(raw.headers.getall("Transfer-Encoding", ()))
    if raw.status < 200:
        problem = f"answered {raw.status} to a request that asked for no upgrade"
    elif codings and any(c.strip().lower() != "chunked" for c in codings.split(",")):
        problem = f"answered with a transfer coding edgecache does not decode ({codings})"
    elif origin and (over := answerbound.origin_head(raw.raw_headers)) is not None:
        problem = over
    else:
        return None
    raw.close()
    log.info("%s %s %s", who, base, problem)
    return OriginError(f"{named}: {problem}")


def loop_token(config: Config, cache: str = "") -> str:
    """This node's name in the Via of its fills and passes (core.forward.via_sent): the same in every worker, and in
    every node of a cluster (a site's origin whose name leads to any of them loops as well): made from the cluster's
    key, else from the machine's name, the node's listeners (no two nodes of one machine share one) and the random
    name of its cache (`cache`, storage.cacheid: machines may share a name, containers often do)."""
    if config.cluster is not None:
        return hmac.new(config.cluster.key, b"edgecache loop", "sha256").hexdigest()[:12]
    me = f"{socket.gethostname()}|{sorted(str(x) for x in config.listen)}|{cache}"
    return hashlib.sha256(me.encode()).hexdigest()[:12]


class ClientBody:
    """A client's request body, forwarded as it arrives; a client that sends nothing for `timeout` seconds
    (origin.body_timeout) ends it (`stalled`), so it cannot hold an origin connection for as long as it likes."""

    def __init__(self, source: AsyncIterable[bytes], timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self.stalled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces = aiter(self.source)
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    piece = await anext(pieces)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.stalled = True
                raise
            yield piece


def _raise_if_stalled(body: ClientBody | None, exc: BaseException) -> None:
    """The request failed because its client stopped sending its body: the client's fault, not the origin's."""
    if body is not None and body.stalled:
        metrics.REQUEST_BODY_TIMEOUTS.inc()
        raise ClientError(408, f"request body stalled: nothing for {body.timeout:g} s") from exc


async def read_chunks(resp: OriginResponse) -> AsyncIterable[bytes]:
    """The body as it arrives; a cut or malformed body raises OriginError, never ends early in silence.

    Chunks are passed on as the parser produced them (iter_chunked would join or split them: a copy of every
    byte, which costs more than the rest of the fill path on a VM). The end is asked of the stream, not read from
    an empty chunk: aiohttp hands every body-less response one shared EMPTY_PAYLOAD whose readchunk() answers
    (b"", True) forever once read, without awaiting, so a loop that skipped empty chunks spun the loop at 100%.
    An empty chunk before the end only marks a chunk boundary, and the next read takes the next one.
    """
    if resp.peer is None:
        counter = metrics.ORIGIN_BYTES.labels(resp.site)
    else:
        counter = metrics.PEER_BYTES.labels(resp.peer, resp.site)
    who = "origin" if resp.peer is None else f"peer {resp.peer}"
    content = resp.raw.content
    try:
        while True:
            chunk, _ = await content.readchunk()
            if chunk:
                counter.inc(len(chunk))
                yield chunk
            elif content.at_eof():
                return
    except TimeoutError as exc:
        raise _body_failed(resp, OriginError(f"{who} body read timed out", timeout=True)) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
        raise _body_failed(resp, OriginError(f"{who} body broken: {exc}")) from exc


def _body_failed(resp: OriginResponse, error: OriginError) -> OriginError:
    error.tried = resp.addr
    if resp.peer is not None:  # a peer's failure is the peer's, never counted or answered as the origin's
        error.peer_kind = observe.peer_error(resp.peer, error)
    return error
