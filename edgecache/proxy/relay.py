"""A forwarded request on the fast path: sent to the object's owner over a pooled connection (proxy.peerpool)
with a signed hop, and the owner's answer written to the viewer as its bytes arrive.

What is sent is core.forward.pass_request's (the key's host and target, the viewer's end-to-end fields, the hop);
what is passed back is core.forward.relayed_fields' (the owner's end-to-end fields, Via and Cache-Status with this
node's entry), framed as aiohttp frames a streamed answer, so either path gives the same bytes. A peer that cannot
be reached is marked down and the request goes to the full handler, which asks the next owner; one that fails
before its answer gets 502/504 naming the peer; one that fails mid-answer cuts the viewer's connection, as an
origin's broken body does. The forwards of one loop turn to a peer are pipelined on one connection (proxy.peerpool):
one sent behind an answer that failed, stalled or waits for its viewer had no byte of its own answer, and is sent
again once on a new connection (then 502); one past the bound of those waiting for the peer gets 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from edgecache import metrics
from edgecache.core.headers import get_first
from edgecache.core.hop import FIELD as HOP
from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.errors import OriginError
from edgecache.proxy import encode, linger, observe
from edgecache.proxy.errorpage import peer_failed
from edgecache.proxy.peerbroken import Malformed, PeerBroken
from edgecache.proxy.peerpool import WAITING, PeerConn, PeerPool
from edgecache.proxy.route import BEHIND, Forward, forward_verdict
from edgecache.proxy.shares import Shares, share

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

log = logging.getLogger(__name__)
_FROM_PEER = metrics.BYTES_SERVED.labels("peer")
_FORWARDED = metrics.FAST_PATH.labels("forwarded")
_TTFB_PEER = metrics.TTFB.labels(CacheStatus.PEER.value)


@dataclass(frozen=True, slots=True)
class _Counters:
    """A peer's and site's metric children, looked up once: labels() costs more than the rest of a small relay."""

    forwarded: Any
    latency: Any
    body: Any
    site_bytes: Any


_counters: dict[tuple[str, str], _Counters] = {}


def _counters_of(peer: str, site: str) -> _Counters:
    found = _counters.get((peer, site))
    if found is None:
        found = _counters[peer, site] = _Counters(
            metrics.PEER_FORWARDED.labels(peer, site),
            metrics.PEER_LATENCY.labels(peer),
            metrics.PEER_BYTES.labels(peer, site),
            observe.site_bytes(site, observe.upstream(CacheStatus.PEER, metrics.Sources())),
        )
    return found


_MINE = cache_status_header(CacheStatus.PEER)


_HOP = HOP.encode("ascii")


class Retried(NamedTuple):
    """The forwards of the head at the front of a connection whose owner could not be reached (forward), decided
    again for the next owner once per ring member at most: `forwards`, reset once the head is answered; and the
    addresses of those asked (`unreached`: a withheld one was not), kept until the next head is decided, for its
    answer's log line to name first in upstream_addr, as the full handler's does (owner.to_owner)."""

    forwards: int
    unreached: tuple[str, ...]


FRESH = Retried(0, ())


class Unreachable(Exception):
    """The owner could not be reached: nothing was sent, and the full handler may ask the next owner."""


class Withheld(Unreachable):
    """Not sent after all: the owner may hold what a purge applied here since the forward was decided removed
    (route.forward_verdict's BEHIND). The request is decided again, and answered here."""


class _Retry(Exception):
    """No answer began, and the request may be sent again, on a new connection: a pooled connection broke before
    any answer (the peer had closed it while idle: once more), or the request was pipelined behind an answer that
    failed, stalled or waits for its viewer (`behind`: once more, then 502)."""

    def __init__(self, error: PeerBroken) -> None:
        super().__init__(error.reason)
        self.error = error


def start(conn: FastPath, fwd: Forward, raw: bytes) -> None:
    """Relay the owner's answer to the request whose head is `raw`, on the connection's turn: sent at once when its
    site's share and a connection to the owner are at hand (Relay.at_once), else by a task that waits for them."""
    relay = Relay(conn, fwd, raw)
    relay.prepare()  # before any share or connection is taken: nothing to give back if it raises
    conn.relay = relay
    conn.server.shared.in_flight += 1
    if not relay.at_once():
        relay.carry(None)


async def forward(relay: Relay, first: BaseException | None) -> None:
    """The forward `relay`, carried out by a task, from its first try's failure when `first` is one. An owner that
    cannot be reached is marked down, and the request is decided again, for the next owner (this node standing in,
    or a peer); once per ring member at most, then the full handler asks the next owner (owner.to_owner)."""
    conn, fwd, raw = relay.conn, relay.fwd, relay.raw
    shared = conn.server.shared
    try:
        await relay.run(first)
    except Unreachable as exc:
        conn.buf = raw + conn.buf
        conn.admitted = fwd.key.primary  # judged already (forward_verdict): not again, whoever answers it
        cluster, member = shared.cluster, fwd.member
        assert cluster is not None
        down = member is not None and not cluster.is_up(member.id)
        again = down or isinstance(exc, Withheld)  # Withheld: decided again, answered here
        if again and conn.retried.forwards < len(cluster.ring.members):
            # The connection's done() decides it again (FastPath.again), for the next owner that is up; the line of
            # whoever answers names this one first, unless withheld: not asked.
            conn.again = True
            asked = () if isinstance(exc, Withheld) else (relay.member.address,)
            conn.retried = Retried(conn.retried.forwards + 1, conn.retried.unreached + asked)
            return
        conn.hand_off()  # not found down, or no owner left to try: the full handler asks (owner.to_owner)
    else:
        conn.head_done()
    finally:
        conn.relay = None
        shared.in_flight -= 1


class Relay:
    """One forwarded request; an Exchange (proxy.exchange) of proxy.peerpool."""

    def __init__(self, conn: FastPath, fwd: Forward, raw: bytes) -> None:
        assert fwd.member is not None
        self.conn = conn
        self.fwd = fwd
        self.raw = raw  # the viewer's head, decided again when the owner cannot be reached
        self.request = b""  # what is sent to the owner
        self.member = fwd.member
        self.trace = observe.new_trace()
        self.counters = _counters_of(self.member.id, fwd.site.name)
        self.peer: PeerConn | None = None
        self.shares: Shares | None = None  # its site's shares of the connections to its peer, while it holds one
        self.counted = False  # it counts against its site's share now (not while paused for its viewer)
        self.finished: asyncio.Future[None] | None = None
        self.status = 0
        self.chunked = False
        self.keep_alive = fwd.keep_alive  # the viewer's connection's state after the answer (encode.relayed)
        self.nbytes = 0
        self.written = False  # a byte of the answer reached the viewer's transport
        self.pending: list[bytes | memoryview] = []  # what one read of the peer gave, written as it ends (flush)
        self.gone = False  # the viewer's connection closed (abandon)
        self.asked = 0.0
        self.waiting = False  # counted among the forwards waiting for its peer (PeerPool.wait)
        # A range (of a video, mostly) goes on a connection of its own: a large answer costs its bytes more than its
        # system calls, and pipelined behind one whose viewer is slow, it would be sent again (PeerConn.pause).
        self.alone = get_first(fwd.headers, "range") is not None

    def prepare(self) -> None:
        """The request to the owner, with its signed hop: built once, whether sent at once or by a task."""
        t, fwd = self.trace, self.fwd
        t.site, t.status, t.client, t.failover = fwd.site.name, CacheStatus.PEER, fwd.client, fwd.failover
        cluster = self.conn.server.shared.cluster
        assert cluster is not None
        hop = cluster.hop_field(fwd.method, fwd.key.primary, t.id, fwd.client, fwd.failover)
        sent = self.conn.server.decider.forwards.sent_head(fwd, self.conn.address)
        self.request = b"%s%s: %s\r\n\r\n" % (sent, _HOP, hop.encode("ascii"))

    def at_once(self) -> bool:
        """Send the request now, when nothing need be waited for: its site's share free and a connection to the owner
        at hand (one taking this turn's requests, or an idle one), the common case. No task then: its creation and
        its two turns cost 5.5 µs of a forward's CPU. Its end is _settled, called back; a first try that fails goes
        on in a task (carry), as one that waited goes on from there."""
        conn, fwd, address = self.conn, self.fwd, self.member.address
        pool = conn.server.peers()
        if pool.closed or pool.waiting.get(address, 0) >= WAITING:  # acquire() and wait() say why, in a task
            return False
        shares = pool.shares(address)
        if not shares.try_take(fwd.site.name, self._most(pool)):
            return False
        peer = pool.at_hand(address, join=not self.alone)
        if peer is None:
            shares.give(fwd.site.name)
            return False
        self.shares, self.counted, self.peer = shares, True, peer
        self.finished = conn.loop.create_future()
        self.finished.add_done_callback(self._settled)
        self.asked = time.monotonic()
        peer.send(self.request, self, head_only=fwd.method == "HEAD", last=self.alone)
        return True

    def _settled(self, finished: asyncio.Future[None]) -> None:
        """The answer to a request sent at once ended: as forward() and FastPath.done end one a task carried."""
        error = ConnectionResetError("cancelled") if finished.cancelled() else finished.exception()
        if error is not None:
            self.carry(error)
            return
        conn = self.conn
        failed: BaseException | None = None
        try:
            self._count(False)
            self.shares = None
            self._finish()
            conn.head_done()
        except Exception as exc:  # what a task would have ended with: the connection is aborted
            failed = exc
        finally:
            conn.relay = None
            conn.server.shared.in_flight -= 1
        conn.ended(failed)

    def carry(self, first: BaseException | None) -> None:
        """Go on in a task: from the start (the share or a connection must be waited for), or from the failure of
        the first try sent at once."""
        self.conn.loop.create_task(forward(self, first)).add_done_callback(self.conn.done)

    async def run(self, first: BaseException | None = None) -> None:
        """Carry the forward out, or on from the failure `first` of its try sent at once. Raises Unreachable
        (nothing sent, the peer is marked down)."""
        metrics.SOURCES.set(self.trace.sources)  # this task's served bytes are this request's
        try:
            await self._exchange(self.request, first)
        except PeerBroken as exc:
            self._broken(exc)
            return
        except ConnectionError:
            self._log(self.status)  # the viewer left: counted and logged as far as it went, as the full handler does
            raise
        self._finish()

    async def _exchange(self, request: bytes, first: BaseException | None) -> None:
        pool = self.conn.server.peers()
        try:
            if first is None:  # else sent at once: its share is taken
                await self._take_share(pool)
            try:
                await self._send(pool, request, first)
            finally:
                self._count(False)
                self.shares = None
        finally:
            self._waited(pool)

    async def _take_share(self, pool: PeerPool) -> None:
        shares = pool.shares(self.member.address)
        pool.wait(self.member.address, +1)
        self.waiting = True
        try:
            await shares.take(self.fwd.site.name, self._most(pool), pool.connect_timeout)
        except TimeoutError:
            raise PeerBroken(f"http://{self.member.address}: timed out", timeout=True) from None
        self.shares, self.counted = shares, True

    def _most(self, pool: PeerPool) -> int:
        """The connections to the owner the forward's site may hold (its share of the pool's limit)."""
        return share(pool.limit, self.conn.server.shared.engine.origin.sites, self.fwd.site.origin_connections)

    def _waited(self, pool: PeerPool) -> None:
        if self.waiting:
            self.waiting = False
            pool.wait(self.member.address, -1)

    def _count(self, counted: bool) -> None:
        """Count against the site's share of connections to the peer again, or no longer (PeerPool.stall)."""
        if self.shares is not None and counted != self.counted:
            self.counted = counted
            (self.shares.add if counted else self.shares.give)(self.fwd.site.name)

    async def _send(self, pool: PeerPool, request: bytes, first: BaseException | None) -> None:
        stale = behind = fresh = False
        while True:
            try:
                if first is not None:  # the try sent at once failed: taken as this loop's first try's failure
                    failure, first = first, None
                    raise failure
                self.peer = await pool.acquire(self.member.address, fresh, join=not self.alone)
                self._waited(pool)
                if self.gone:  # the viewer left while this waited for a connection: it goes back unused
                    pool.release(self.peer)
                    raise ConnectionResetError("client went away")
                if self._withheld():  # each attempt, the first and any sent again, as the forward was judged
                    pool.release(self.peer)
                    raise Withheld("the owner lacks a purge applied here")
                self.finished = self.conn.loop.create_future()
                self.asked = time.monotonic()
                self.peer.send(request, self, head_only=self.fwd.method == "HEAD", last=self.alone)
                await self.finished
                return
            except _Retry as again:
                if again.error.behind:
                    if behind:
                        raise again.error from None  # twice behind answers that failed: 502 (_broken)
                    behind = True
                elif stale:
                    # Both tries met a kept-alive connection the peer had closed (the second waited for one).
                    self._unreachable(PeerBroken("peer closed its connections before answering"))
                stale = stale or not again.error.behind
                fresh = True
            except PeerBroken as exc:
                if exc.timeout or exc.busy or self.status:
                    raise  # it may be only slow, or it answered: no other node is asked
                self._unreachable(exc)

    def _withheld(self) -> bool:
        """The forward's own verdict, asked again (`admitted`: judged and counted once): a purge applied here since
        may keep the request from its owner (a forward sent again waited for the answer before it to fail)."""
        fwd, shared = self.fwd, self.conn.server.shared
        return forward_verdict(shared, fwd.site, fwd.key, fwd.client, False, self.member, admitted=True) == BEHIND

    def _unreachable(self, exc: PeerBroken) -> NoReturn:
        """No answer came: refused, or the connection broke first. Nothing reached the viewer, and a GET or HEAD
        may go elsewhere: the peer is down now, and the full handler asks the next owner."""
        self._count_error(exc)
        assert self.conn.server.shared.cluster is not None
        self.conn.server.shared.cluster.failed(self.member.id, f"forward: {exc.reason}")
        raise Unreachable(exc.reason) from exc

    def abandon(self) -> None:
        """The viewer's connection is gone."""
        self.gone = True
        if self.peer is not None:
            self.peer.abandon(self)
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionResetError("client went away"))

    def pause(self) -> None:
        if self.peer is not None and self.peer.exchange is self:
            self.peer.pause()
            self._count(False)

    def resume(self) -> None:
        if self.peer is not None and self.peer.exchange is self:
            self.peer.resume()
            self._count(True)

    # --- the Exchange ----------------------------------------------------------------------------------------

    def head(self, status: int, reason: str, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        t, fwd, took = self.trace, self.fwd, time.monotonic() - self.asked
        t.origin_ms = round(took * 1000, 3)
        t.sources.asked(self.member.address)  # the owner's, as a forward of the full handler names it (origin.address)
        self.counters.forwarded.inc()
        self.counters.latency.observe(took)
        if status >= 500:
            metrics.PEER_ERRORS.labels(self.member.id, "5xx").inc()
        date = self.conn.server.date()
        heads, holes = self.conn.server.decider.forwards.heads, self.peer.holes if self.peer is not None else []
        encoded, self.chunked, self.keep_alive = heads.encode(
            status, reason, fields, holes, _MINE, fwd.method, date, fwd.keep_alive
        )
        if encoded is None:
            raise PeerBroken("peer's answer has a field that cannot be passed on")
        self._write(encoded)
        t.ttfb = time.monotonic() - t.t0
        _TTFB_PEER.observe(t.ttfb)
        _FORWARDED.inc()

    def body(self, piece: bytes) -> None:
        n = len(piece)
        if not n:
            return
        self.nbytes += n
        self.counters.body.inc(n)
        _FROM_PEER.inc(n)
        if self.chunked:
            self._write(b"%x\r\n%b\r\n" % (n, piece))
        else:
            self._write(piece)

    def done(self, keep: bool) -> None:
        if self.chunked:
            self._write(b"0\r\n\r\n")
        self.flush()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def failed(self, error: PeerBroken, before_head: bool) -> None:
        if self.finished is None or self.finished.done():
            return
        stale = before_head and self.peer is not None and self.peer.used and not error.timeout
        stale = stale and not isinstance(error, Malformed)  # it answered, past a bound: no stale socket's
        self.finished.set_exception(_Retry(error) if stale or error.behind else error)

    # --- ends ----------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.conn.transport is None:
            raise PeerBroken("client went away")
        self.pending.append(data)

    def flush(self) -> None:
        """Write what the peer's last read gave: a small answer's head and body in one system call."""
        transport, pending = self.conn.transport, self.pending
        if not pending or transport is None:
            return
        self.pending = []
        self.written = True
        self.conn.server.cork.relayed(self.conn, pending)
        if self.conn.write_paused:
            self.pause()

    def _count_error(self, exc: PeerBroken) -> str:
        refused = exc.connect
        error = OriginError(exc.reason, timeout=exc.timeout, refused=refused)
        return observe.peer_error(self.member.id, error, malformed=isinstance(exc, Malformed))

    def _broken(self, exc: PeerBroken) -> None:
        """The peer failed: an error answer if nothing was written yet, else the viewer's connection is cut."""
        kind = self._count_error(exc)
        self.trace.sources.asked(self.member.address)  # asked, though no head came
        transport = self.conn.transport
        if self.written or transport is None:
            self._log(self.status or 502)
            if transport is not None:
                transport.abort()
            return
        self.trace.status = CacheStatus.ERROR
        log.info("%s %s: peer %s failed (%s): %s", self.fwd.method, self.fwd.key.path, self.member.id, kind, exc)
        code, reason = (503, "peer busy") if exc.busy else peer_failed(kind, exc.timeout)
        answer = encode.error(code, reason, self.conn.server.date(), self.fwd.keep_alive)
        transport.write(answer)
        observe.head_sent(self.trace)
        self.status = code
        self._log(code, len(answer) - answer.index(b"\r\n\r\n") - 4)
        self._close_if_due()

    def _finish(self) -> None:
        self._log(self.status)
        self._close_if_due()

    def _close_if_due(self) -> None:
        if not self.keep_alive.persists and self.conn.transport is not None:
            linger.close(self.conn)  # what the viewer sent after this request, unread, would reset the answer

    def _log(self, code: int, nbytes: int | None = None) -> None:
        t, fwd = self.trace, self.fwd
        n = self.nbytes if nbytes is None else nbytes
        observe.count(t, fwd.method, code)
        way = observe.upstream(t.status, t.sources)
        (self.counters.site_bytes if t.status is CacheStatus.PEER else observe.site_bytes(t.site, way)).inc(n)
        shared = self.conn.server.shared
        if shared.access.enabled:
            key = fwd.key
            line = observe.Line.of(fwd.client, fwd.method, key.host, key.full_target, fwd.headers, fwd.keep_alive)
            observe.log_line(shared.access, t, line, code, n, shared.node, way, self.conn.retried.unreached)
