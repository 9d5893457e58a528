"""Connections to the other nodes of the cluster: pooled keep-alive HTTP/1.1, the requests of one loop turn to
one peer pipelined on one connection.

A peer is an upstream of its own, not an origin: the fast path relays a forwarded request's answer from here to
the viewer as its bytes arrive (proxy.relay), with no web framework on either side. Responses are parsed by llhttp
(httptools, as uvicorn's protocol does). Everything is bounded: connections per peer (waiters queue for one within
the connect timeout), requests waiting per peer (WAITING), requests in flight on one connection (DEPTH), idle
connections kept, a response head's size, and the time between two reads.

Why pipelined: a forward of a small object cost two more system calls each way than a hit, on two loops sharing a
core, and that was most of its cost (loadtest/README.md, "Forwarded against direct"). The requests that reach one
loop turn now go to the owner on one connection, written together at the next turn (uvloop writes each write() at
once when it can): one write here, one read and, for the answers it has at once, one write at the owner
(proxy.cork), one read here, for the whole batch. A connection takes requests only in the turn its first one
was sent (`taking`): an answer that is slow (the owner's miss) holds up at most the DEPTH - 1 requests that came in
its turn, never those that came later, which go on another connection; and the ones behind an answer whose viewer
stops reading are sent again elsewhere at once (PeerConn.pause). A range goes alone (proxy.relay: its answer is
large, and its system calls a small part of its cost). A connection that fails with requests behind the
one being answered sends those again, once (proxy.relay): their answers had not begun.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import httptools

from edgecache import metrics
from edgecache.proxy import answerbound
from edgecache.proxy.exchange import DROPPED, Exchange
from edgecache.proxy.peerbroken import Malformed, PeerBroken
from edgecache.proxy.relayhead import HOLES
from edgecache.proxy.shares import Shares

MAX_HEAD = answerbound.MAX_HEAD  # a peer's response head longer than this is broken
IDLE_KEPT = 64  # idle connections kept per peer; more are closed when released
# Requests in flight on one connection at most: what a slow answer at the front can hold up (DEPTH - 1), against the
# system calls a batch saves (a batch of n costs 1/n of a write and a read on each side).
DEPTH = 8
WAITING = 1024  # forwards to one peer waiting for their site's share or a connection; more get 503 at once
_FRAMING = (b"content-length", b"transfer-encoding")  # fields that end a body other than by the close
_BATCH = metrics.PEER_BATCH


class PeerConn(asyncio.Protocol):
    """One connection to a peer. Its owner sends requests with send(); the answers, in order, go to their
    Exchanges: `exchange` the one being answered, `behind` those sent after it."""

    def __init__(self, pool: PeerPool, address: str, read_timeout: float) -> None:
        self.pool = pool
        self.address = address
        self.read_timeout = read_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.used = False  # it carried an exchange before: a failure before any answer may be a stale socket
        self.head_only = False  # a HEAD's answer: its head is all of it, whatever Content-Length says
        self.got_head = False
        self.interim = False  # a 1xx answer, skipped
        self.fields: list[tuple[bytes, bytes]] = []  # as llhttp gives them: decoded only if they must be
        self.holes: list[int] = []  # the places in `fields` of those whose value is the moment's (proxy.relayhead)
        self.reason = ""
        self.head_size = 0
        self.last_read = 0.0
        self.sent_at = 0.0
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.behind: collections.deque[tuple[Exchange, bool]] = collections.deque()  # (exchange, head_only)
        self.taking = False  # it takes more requests: those of the loop turn its first one was sent in
        self.moved = False  # the answer being read changed within this read (its head's bytes cannot be told apart)
        self.out: list[bytes] = []  # the requests of this turn, written together when it ends (seal)
        self.stalled, self.ended = 0, False  # bytes read since an element of the answer ended; one ended (this read)
        self.counted = True  # one of the pool's `open` to its peer, until its place is given back (PeerPool._let_go)

    # --- sending -------------------------------------------------------------------------------------------

    def send(self, request: bytes, exchange: Exchange, head_only: bool, last: bool = False) -> None:
        """Send a request; its answer comes after those of the requests sent before it. Only on a connection just
        acquired, or one that takes() more. `last`: none is sent behind it. Nor behind a HEAD: llhttp cannot be told
        an answer is a HEAD's, and reads one last, when it is (on_headers_complete)."""
        assert self.transport is not None, "send() on a closed connection"
        if self.exchange is None:
            assert not self.behind, "an answer is due before this one's"
            self._front(exchange, head_only)
            self.taking = not (head_only or last)
            self.pool.batch(self)
        else:
            assert self.takes(), "send() on a connection that takes no more requests"
            self.behind.append((exchange, head_only))
            self.taking = not (head_only or last)
        self.out.append(request)

    def takes(self) -> bool:
        """Whether a request may be sent behind those in flight (PeerPool.acquire)."""
        return self.taking and not self.paused and self.transport is not None and len(self.behind) + 1 < DEPTH

    def seal(self) -> None:
        """The loop turn whose requests this connection carries is over: they are written, in one system call, and
        no more are sent on it until all are answered."""
        self.taking = False
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():  # not failed meanwhile
            _BATCH.observe(len(out))
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _front(self, exchange: Exchange, head_only: bool) -> None:
        """`exchange` is the one whose answer is read next; its clock starts now."""
        self.exchange, self.head_only, self.got_head = exchange, head_only, False
        self.fields, self.holes, self.reason, self.head_size, self.interim, self.stalled = [], [], "", 0, False, 0
        self.last_read = self.sent_at = self.loop.time()
        if self.timer is None:  # one timer for the connection: _tick moves itself to the answer being read
            self.timer = self.loop.call_at(self.sent_at + self.read_timeout, self._tick)

    def pause(self) -> None:
        """The viewer is not taking the bytes: stop reading (TCP holds the peer), and stop the read clock. While
        paused, the connection gives its place under the pool's limit to others (PeerPool.stall). The requests
        sent behind this answer are sent again elsewhere now, their answers here read and dropped later: a viewer
        that does not read holds up no other."""
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
            self.pool.stall(self.address, +1)
            self._let_go_behind(PeerBroken("an answer before it waits for its viewer", behind=True))

    def _let_go_behind(self, error: PeerBroken) -> None:
        behind = [(ex, head_only) for ex, head_only in self.behind if ex is not DROPPED]
        self.behind = collections.deque((DROPPED, head_only) for _, head_only in self.behind)
        for exchange, _ in behind:
            exchange.failed(error, before_head=True)

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.pool.stall(self.address, -1)
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def _tick(self) -> None:
        self.timer = None
        if self.exchange is None:  # none in flight (the next send() starts the clock again)
            return
        due = self.last_read + self.read_timeout
        if not self.got_head:  # a head sent a byte at a time restarts no clock: it is whole within the timeout
            due = self.sent_at + self.read_timeout
        if self.paused or self.loop.time() < due:
            self.timer = self.loop.call_at(max(due, self.loop.time() + 0.1), self._tick)
            return
        self._fail(PeerBroken(f"http://{self.address}: timed out", timeout=True))

    # --- the connection --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # nothing asked: a peer that talks out of turn is not reused
            self.close()
            return
        self.last_read = self.loop.time()
        self.moved = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.exchange is not None or self.behind:
                bound = exc.__context__  # a bound a callback of ours raised (answerbound)
                error = bound if isinstance(bound, Malformed) else Malformed(f"peer sent a malformed answer: {exc}")
                self._fail(error)
            return
        self.stalled, self.ended = (0 if self.ended else self.stalled + len(data)), False
        if (stalled := answerbound.stalled(self.stalled)) is not None:
            return self._fail(Malformed(stalled))
        if self.exchange is not None:  # the answer still going (those that ended wrote all they had)
            self.exchange.flush()
        if not self.got_head and self.exchange is not None and not self.moved:
            # llhttp keeps a field's pieces until it ends: what it holds is bounded here, not by the peer (a head
            # that began in the read that ended the answer before it counts from the next read: one read more).
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._fail(Malformed(f"peer's answer head is over {MAX_HEAD} bytes"))

    def eof_received(self) -> bool | None:
        exchange = self.exchange
        if exchange is not None and self.got_head and self._until_close():
            self._complete(keep=False)  # the body ran until the peer closed: that is its end
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.paused:
            self.paused = False
            self.pool.stall(self.address, -1)
        self.pool.forget(self)
        if self.exchange is not None or self.behind:
            self._fail(PeerBroken(f"peer closed the connection{f': {exc}' if exc else ''}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- llhttp's callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None:
            # An answer nobody asked for, begun in the read that ended the last one asked: llhttp would keep its
            # first bytes, and give the rest, read after the next request is sent, as that request's answer.
            self.close()  # a peer that talks out of turn is not reused (data_received), whatever it said
            raise PeerBroken("peer answered more requests than it was sent")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")
        if (over := answerbound.status(self.reason)) is not None:
            raise Malformed(over)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.ended = True
        self.fields.append((name, value))  # a trailer's too, after the head's
        if name in HOLES:
            self.holes.append(len(self.fields) - 1)
        if (over := answerbound.field(name, value, len(self.fields))) is not None:
            raise Malformed(over)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (101 is never asked for): the real one follows
            self.interim = True
            return
        self.got_head = True
        assert self.exchange is not None
        self.exchange.head(status, self.reason, self.fields)
        if self.head_only and self.exchange is not None:
            # llhttp cannot be told the answer is to a HEAD: this parser would wait for a body; the next uses anew.
            keep = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self._complete(keep)

    def on_body(self, body: bytes) -> None:
        self.ended = True
        if self.exchange is not None and not self.head_only:
            self.exchange.body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim, self.fields, self.holes, self.reason = False, [], [], ""  # MAX_HEAD bounds all their bytes
            return
        if self.exchange is not None and not self.head_only:
            self._complete(keep=self.parser.should_keep_alive())

    # --- ends ----------------------------------------------------------------------------------------------

    def _until_close(self) -> bool:
        """The body has neither a length nor chunks: it ends when the peer closes."""
        if self.head_only or self.parser.get_status_code() in (204, 304):
            return False
        return not any(k.lower() in _FRAMING for k, _ in self.fields)

    def _stop_clock(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _complete(self, keep: bool) -> None:
        exchange, self.exchange = self.exchange, None
        self.used = True
        if self.paused:  # the body is all here; the viewer's slowness is no reason to drop the connection
            self.resume()
        reusable = keep and self.transport is not None
        if not reusable:
            self.close()
            self._stop_clock()
            self.taking = False
            self._let_go_behind(PeerBroken("peer closed the connection after the answer before it", behind=True))
            self.behind.clear()
        assert exchange is not None
        exchange.done(reusable)
        if not reusable:
            return
        if self.behind:  # the next answer may be in this very read: llhttp goes on with it
            self._front(*self.behind.popleft())
            self.moved = True
        else:
            self._stop_clock()
            self.pool.release(self)

    def abandon(self, exchange: Exchange) -> None:
        """The viewer of `exchange` left. Being answered: the rest of its answer is not read, so the connection
        cannot carry another (those behind it are sent again elsewhere); behind: its answer is read and dropped."""
        if exchange is self.exchange:
            self.exchange = None
            self._fail(PeerBroken("the answer before it was cut (its viewer left)", behind=True))
            return
        self.behind = collections.deque((DROPPED if ex is exchange else ex, h) for ex, h in self.behind)

    def _fail(self, error: PeerBroken) -> None:
        exchange, self.exchange = self.exchange, None
        self._stop_clock()
        self.taking = False
        if self.transport is not None:
            self.transport.abort()
        if exchange is not None:
            exchange.failed(error, before_head=not self.got_head)
        # The answers of those sent behind it had not begun: sent again elsewhere (proxy.relay), even after a
        # timeout, which was the answer before theirs.
        self._let_go_behind(PeerBroken(f"{error.reason} (an answer before it)", behind=True))
        self.behind.clear()


class PeerPool:
    """Connections to every peer, by address. `limit` connections per peer at most (origin.max_connections), not
    counting those paused for a viewer that stopped reading: viewers that never read would otherwise hold every
    place, and every other forward to that peer would wait for one until its connect timeout (a 504). Those are
    bounded by the viewers' connections (server.max_connections) and cut by client_write_timeout. Each site's
    forwards to a peer hold at most its share of them (`shares`, taken by proxy.relay): an owner that hangs on one
    site's objects leaves the other sites' forwards connections."""

    def __init__(self, limit: int, connect_timeout: float, read_timeout: float) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: dict[str, collections.deque[PeerConn]] = {}
        self.open: dict[str, int] = {}
        self.stalled: dict[str, int] = {}  # of those open, paused for a viewer that is not reading
        self.waiters: dict[str, collections.deque[asyncio.Future[PeerConn | None]]] = {}
        self.taking: dict[str, PeerConn] = {}  # by peer, the connection that takes this loop turn's requests
        self.waiting: dict[str, int] = {}  # forwards to each peer waiting for a share or a connection (WAITING)
        self.closed = False
        self._shares: dict[str, Shares] = {}

    def shares(self, address: str) -> Shares:
        """The sites' shares of the connections to `address` (proxy.shares)."""
        found = self._shares.get(address)
        if found is None:
            found = self._shares[address] = Shares()
        return found

    async def acquire(self, address: str, fresh: bool = False, join: bool = True) -> PeerConn:
        """One at_hand (unless `fresh`), a new one, or the next one released; the caller sends on it at once. PeerBroken
        (connect=True) when the peer cannot be reached, or no connection frees up within the connect timeout."""
        if self.closed:  # the worker is stopping: no new connection would ever be closed
            raise PeerBroken(f"http://{address}: the node is stopping", connect=True)
        if not fresh and (conn := self.at_hand(address, join)) is not None:
            return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.open.get(address, 0) - self.stalled.get(address, 0) >= self.limit:
                    return await self._wait(address)
                return await self._connect(address)
        except TimeoutError:
            raise PeerBroken(f"http://{address}: timed out", timeout=True) from None

    def at_hand(self, address: str, join: bool = True) -> PeerConn | None:
        """One to `address` needing no wait: the one taking this turn's requests (if `join`), or an idle one."""
        if join and (taking := self.taking.get(address)) is not None and taking.takes():
            return taking
        idle = self.idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _wait(self, address: str) -> PeerConn:
        waiter: asyncio.Future[PeerConn | None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(address, collections.deque()).append(waiter)
        try:
            conn = await waiter
        except BaseException:
            # Cancelled (the connect timeout) in the turn a connection or a free place was handed over: pass it on
            # to the next waiter, or it would be lost to the pool until the peer closed it.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not None:
                    self.release(handed)
                else:
                    self._freed(address)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters[address].remove(waiter)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return await self._connect(address)  # closed meanwhile: its place is this waiter's
        return conn

    async def _connect(self, address: str) -> PeerConn:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        self.open[address] = self.open.get(address, 0) + 1
        made: list[PeerConn] = []

        def protocol() -> PeerConn:
            made.append(PeerConn(self, address, self.read_timeout))
            return made[-1]

        try:
            _, conn = await loop.create_connection(protocol, host.strip("[]"), int(port))
        except BaseException as exc:
            # Its place given back once: a connect cancelled once connected (its timeout) closes the connection,
            # and asyncio's loop then tells its protocol so (forget), uvloop's does not.
            if made:
                self._let_go(made[0])
            else:
                self._gone(address)
            if isinstance(exc, OSError):
                raise PeerBroken(f"http://{address}: {exc.__class__.__name__}: {exc}", connect=True) from exc
            raise
        return conn

    def batch(self, conn: PeerConn) -> None:
        """`conn` takes the requests to its peer sent in this loop turn (if it takes any); at the next turn, they
        are written, and it takes no more."""
        if conn.taking:
            self.taking[conn.address] = conn
        conn.loop.call_soon(self._sealed, conn)

    def _sealed(self, conn: PeerConn) -> None:
        conn.seal()
        if self.taking.get(conn.address) is conn:
            del self.taking[conn.address]

    def wait(self, address: str, change: int) -> None:
        """A forward to `address` began (+1) or ended (-1) waiting for a share or a connection. PeerBroken(busy)
        when WAITING wait already: a queue without a bound would hold any number of viewers' requests."""
        waiting = self.waiting.get(address, 0)
        if change > 0 and waiting >= WAITING:
            raise PeerBroken(f"http://{address}: {waiting} forwards wait for it already", busy=True)
        self.waiting[address] = waiting + change

    def release(self, conn: PeerConn) -> None:
        """A connection whose exchanges ended cleanly: to the next waiter, or kept idle (within IDLE_KEPT). One
        still answering (that took requests in the turn it was given to another) stays with them."""
        if conn.exchange is not None:
            return
        if self.taking.get(conn.address) is conn:
            del self.taking[conn.address]
        waiters = self.waiters.get(conn.address)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        idle = self.idle.setdefault(conn.address, collections.deque())
        if self.closed or len(idle) >= IDLE_KEPT:
            conn.close()
            return
        idle.append(conn)

    def stall(self, address: str, change: int) -> None:
        """A connection to `address` was paused (+1: its place goes to a waiter) or resumed (-1)."""
        self.stalled[address] = self.stalled.get(address, 0) + change
        if change > 0:
            self._freed(address)

    def forget(self, conn: PeerConn) -> None:
        """A connection closed: it no longer counts, and a waiter may open a new one in its place."""
        idle = self.idle.get(conn.address)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
        self._let_go(conn)

    def _let_go(self, conn: PeerConn) -> None:
        if conn.counted:
            conn.counted = False
            self._gone(conn.address)

    def _gone(self, address: str) -> None:
        self.open[address] = max(0, self.open.get(address, 0) - 1)
        self._freed(address)

    def _freed(self, address: str) -> None:
        """A place under the limit came free: the next waiter connects in it."""
        waiters = self.waiters.get(address)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # it connects itself, in the place this one left
                return

    def close(self) -> None:
        self.closed = True
        for idle in self.idle.values():
            for conn in list(idle):
                conn.close()
            idle.clear()
