"""The client listener's protocol: GET and HEAD answered straight off the socket, what it cannot answer to aiohttp.

Every connection starts here. Each request head is cut at its blank line and decided (decide.py: aiohttp's own
request parser, find_hit(), memos of the decisions): hits from memory or disk (diskhit.py), misses from fills
(coldmiss.py), forwards to the owner (relay.py), refusals, pass-throughs, and the 400 of a head aiohttp's parser
refuses (badhead.py). Anything else (another method, a body, a few odd fills) hands the connection, with every
byte not yet answered, to aiohttp, which serves it as it would have.

This module also owns what aiohttp does not bound before a head is complete: a client must finish each request
head within `header_timeout` (slowloris), and an idle keep-alive connection is closed after `idle_timeout` (the one
timer that watches both: deadline.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from edgecache import metrics
from edgecache.core import clientaddr, proxyproto
from edgecache.core.churn import Tries
from edgecache.core.freshness import Use
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus
from edgecache.proxy import badhead, coldmiss, cork, diskhit, encode, linger, multipart, observe, passing, refuse, relay
from edgecache.proxy.deadline import Deadline
from edgecache.proxy.diskhit import PIECE as PIECE  # fastserver sizes its pooled buffers by it
from edgecache.proxy.fill import Adopted
from edgecache.proxy.headguard import HeadGuard
from edgecache.proxy.lookup import Load, Pass
from edgecache.proxy.prepared import Prepared, head_at
from edgecache.proxy.relay import Relay
from edgecache.proxy.route import Forward, Refused, fronted

if TYPE_CHECKING:
    from edgecache.proxy.fastserver import FastServer

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024  # a longer head is judged by aiohttp's parser, whose field limits refuse it (badhead: 400)
# Unanswered input held per connection: past it (or while the client is not taking our answers) the socket is
# not read, so a client pipelining heads it never reads answers to is held by TCP, not by this process's memory.
# One read (uvloop takes up to 256 KiB at a time) can land past the mark.
MAX_PENDING = 256 * 1024
# Heads one connection answers in a loop turn: a read of pipelined heads (a 256 KiB one holds thousands) answered in
# one callback held every other connection of the worker for as long (178-271 ms for fat distinct heads under load).
HEADS_A_TURN = 32
_HANDED_OFF = metrics.FAST_PATH.labels("handed_off")
_UPSTREAM = observe.upstream(CacheStatus.HIT, metrics.Sources())  # a fresh hit, every slice in hand: "cache"

_FULL = "too many connections: try again soon"


class FastPath(asyncio.Protocol):
    def __init__(self, server: FastServer, proxy: bool = False) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client = "-"  # of the request being answered (core.clientaddr)
        self.address = "-"  # the connection's: the socket's peer, or whom its PROXY header declared
        self.proxy = proxy  # a PROXY header is still to come (server.proxy_protocol)
        self.declared: str | None = None  # the client that header named
        self.buf = b""
        self.busy = False  # a response is being read from disk or written with waits
        self.closing = self.write_paused = False
        self.eof = False  # the client shut its sending side: answer what it sent, then close
        self.held = False  # reading paused by _flow (the only place that pauses it)
        self.drained: asyncio.Future[None] | None = None
        self.deadline = Deadline(self.loop, self._watched, self._deadline_passed)
        self.write_timer: asyncio.TimerHandle | None = None
        self.sock_fd, self.tls = -1, False  # tls: answers are written a piece at a time (diskhit.TLS_PIECE)
        self.loads = 0  # disk lookups made for the head at the front of the buffer
        self.loaded_at = 0  # the store's `forgotten` when the first of them was made
        self.relay: Relay | None = None  # the forward to a peer being answered
        self.started: coldmiss.Started | None = None  # the fill the head at the front of the buffer is waiting on
        self.adopted: Adopted | None = None  # a fill the full handler takes over with the connection (hand_off)
        self.admitted: str | None = None  # or the primary key of a request let in here (Shared.admitted)
        self.retried = relay.FRESH  # forwards of the head at the front whose owner could not be reached
        self.again = False  # the head at the front decided again, let in already (a variant, a version, a next owner)
        self.named: tuple[str, ...] | None = None  # the Vary of another variant's answer, decided again with: once
        # The head decided again for a new version or a purge (coldmiss.tried), and its tries so far (core.churn)
        self.tries: tuple[bytes, Tries] | None = None
        self.first_byte = 0.0  # when the head of the answer being sent went out (sent): its log line's ttfb

    # --- connection events -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        transport = self.transport
        peer = transport.get_extra_info("peername")
        self.address = self.client = str(peer[0]) if peer else "-"
        sock = transport.get_extra_info("socket")
        self.tls = transport.get_extra_info("sslcontext") is not None  # never sendfile under TLS
        self.sock_fd = sock.fileno() if sock is not None and not self.tls else -1
        if self.server.stopping:
            # Accepted as the listener closed (its backlog), after shutdown() looked for connections to close: no
            # one would close it later.
            self.closing = True
            transport.close()
            return
        if self.server.open >= self.server.settings.max_connections:
            # Shed at the door: a quick, honest answer instead of a slow collapse (handed-off ones count too).
            metrics.REJECTED_CONNECTIONS.inc()
            transport.write(encode.error(503, _FULL, self.server.date(), KeepAlive.CLOSE))
            linger.close(self, self.server.full)  # the request it sent, unread, would reset the answer
            return
        self.server.connections.add(self)
        self.server.open += 1
        # A new connection that sends nothing holds a descriptor and one of max_connections: its first head is
        # awaited no longer than a head in progress is (nginx's client_header_timeout, Varnish's timeout_idle).
        settings = self.server.settings
        self.deadline.arm("idle", min(settings.idle_timeout, settings.header_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:  # counted (not refused at the door, not handed over)
            self.server.open -= 1
        self.server.gone(self)
        self.deadline.cancel()
        if self.write_timer is not None:
            self.write_timer.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionResetError("client went away"))
        if self.relay is not None:
            self.relay.abandon()
        coldmiss.drop(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.proxy and not self._proxy_header():
            return
        if not self.busy:
            self._process()
        else:
            self._flow()

    def eof_received(self) -> bool | None:
        # Half-closed (`nc -N`, `shutdown(SHUT_WR)`): every request sent before it is still answered; _after() closes
        # once none is left. None would close it now (TLS closes anyway after a close_notify, and warns of a True).
        self.eof = True
        if self.proxy and self.transport is not None:  # it ended before its PROXY header did
            self.closing = True
            self.transport.close()
            return True
        if not self.busy:
            self._process()
        return None if self.tls else True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._flow()
        if self.relay is not None:
            self.relay.pause()
        # A client that stops reading holds its connection only this long.
        self.write_timer = self.loop.call_later(self.server.settings.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if self.relay is not None:
            self.relay.resume()
        if not self.busy:
            self._process()

    def _proxy_header(self) -> bool:
        """Read the PROXY header this listener's connections start with (it may come in pieces, within
        header_timeout); True once it is read, and the connection's address is the client it declared. A header
        from an address not allowed to send one, or bytes that are not one (a client speaking HTTP to the
        balancer's port), get 400 and the connection closes."""
        allowed = self.server.shared.proxy_from
        if allowed and not clientaddr.within(self.address, allowed):
            return self._refuse("this address may not send a PROXY protocol header")
        got = proxyproto.parse(self.buf)
        if isinstance(got, proxyproto.NeedMore):
            self.deadline.arm("head", self.server.settings.header_timeout)
            return False
        if isinstance(got, proxyproto.Invalid):
            return self._refuse(got.reason)
        self.proxy = False
        self.deadline.disarm()
        self.buf = self.buf[got.consumed :]
        if got.source is not None:  # LOCAL and UNKNOWN name no client: the socket's peer stands
            self.address = self.client = self.declared = got.source
        return True

    def _refuse(self, reason: str) -> bool:
        self.buf = b""
        if self.transport is not None:  # no request was read: no version to answer in but HTTP/1.1, closing
            self.transport.write(encode.error(400, reason, self.server.date(), KeepAlive.CLOSE))
        linger.close(self)
        return False

    # --- requests ----------------------------------------------------------------------------------------

    def _process(self) -> None:
        self.server.cork.around(self, self._answer_heads)  # the answers from memory of one read: one write
        self._after()

    def _next_turn(self) -> None:
        if self.transport is not None and not self.busy:  # (a read meanwhile may have answered them, or begun one)
            self._process()

    def _after(self) -> None:
        """What a connection does once it has answered what it can: wait for the next head (or its end), close
        after a half-close, and read only while the client takes our answers and little input is waiting."""
        if self.transport is None or self.busy or self.closing:
            return
        if not (self.buf or self.eof or self.write_paused or self.held):  # a keep-alive client between requests
            self.deadline.arm("idle", self.server.settings.idle_timeout)
            return
        complete = b"\r\n\r\n" in self.buf  # a head waits while the client is not taking our answers
        if self.eof and not complete:  # the client sent all it will, and every whole head has been answered
            return linger.close_idle(self)
        if not self.buf:
            self.deadline.arm("idle", self.server.settings.idle_timeout)
        elif not complete:
            self.deadline.arm("head", self.server.settings.header_timeout)
        self._flow()

    def _flow(self) -> None:
        transport = self.transport
        if transport is None or self.closing or self.eof:
            return
        hold = self.write_paused or len(self.buf) > MAX_PENDING
        if hold != self.held:
            self.held = hold
            if hold:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _answer_heads(self) -> None:
        if not self.server.settings.answers:  # the fast path is off: it only read the PROXY header
            return None if self.eof and not self.buf else self.hand_off()  # an end alone: _after closes it
        turn = 0
        while self.transport is not None and not (  # an empty buffer: no head to look for (a lone request's)
            not self.buf or self.busy or self.write_paused or (self.closing and self.started is None and not self.again)
        ):
            if turn == HEADS_A_TURN:  # the rest after the other connections' callbacks, in order
                self.loop.call_soon(self._next_turn)
                return
            turn += 1
            settling = self.started is not None  # its fill has its head: answered as a miss, or by the full handler
            admitted = settling or self.again  # let in when it was first decided
            self.retried = self.retried if admitted else relay.FRESH  # a new head: no owner of it found unreachable
            end = self.server.cork.head_end(self)
            if end < 0:  # a head ended by bare LFs, or a TLS record (0x16) is none: aiohttp's parser refuses it now
                buf = self.buf
                odd = len(buf) > MAX_HEAD or b"\n\n" in buf or b"\n\r\n" in buf or buf[:1] == b"\x16"
                if odd and not badhead.answered(self, buf):
                    self.hand_off()
                return
            store = self.server.shared.engine.store
            if store.stale():  # another worker purged something: forget what this one holds, then go on
                self.busy = True
                self.loop.create_task(refuse.before_head(self, store.catch_up())).add_done_callback(self.done)
                return
            head = self.buf[: end + 4]
            # Domain fronting (a host its SNI name's certificate does not cover): 421, before any lookup or memo
            front = fronted(self.server.shared, self.transport, head, self.server.decider.parser) if self.tls else None
            self.client = self._client_of(head)
            placed = self.started.placed if self.started is not None else None
            prepared = front or self.server.decider.answer(head, self.client, admitted, placed, self.named)
            self.server.cork.decided(self, prepared)
            if settling:
                # A refusal now (a signed URL that expired meanwhile) is not one: the request was let in when its
                # fill started, and the full handler, carrying that fill on, does not judge it again.
                settled = coldmiss.settle(self, head, None if isinstance(prepared, Refused | Pass) else prepared)
                if isinstance(settled, coldmiss.Again | coldmiss.Waiting):  # Waiting: busy until another fill's head
                    continue
                if isinstance(settled, coldmiss.Written | coldmiss.Streamed):  # answered, or being answered
                    self.head_done()
                    self.buf = self.buf[end + 4 :]
                    self.deadline.disarm()
                    if self.busy:
                        return
                    continue
                prepared = settled
            elif self.loads and self.loaded_at != store.forgotten:  # what they loaded was forgotten: again
                self.loads = 0
            if not settling and (prepared is None or (isinstance(prepared, Load) and self.loads >= 2)):
                # No hit, with all the disk holds loaded: a miss (or a stale entry to revalidate) is filled here
                started = coldmiss.start(self, head, admitted)
                if started is False and not badhead.answered(self, head):  # one aiohttp's parser takes
                    self.hand_off()
                if not isinstance(started, Refused | Pass):
                    return
                prepared = started
            if not self._carry_out(prepared, head, end):
                return

    def _client_of(self, head: bytes) -> str:
        """Judged for each request, as the last reload left the list: a balancer's connection outlives reloads."""
        forwarders = self.server.shared.forwarders  # a trusted one's X-Forwarded-For names the client
        if forwarders and clientaddr.within(self.address, forwarders):
            return clientaddr.real_client(self.address, clientaddr.forwarded_for(head), forwarders)
        return self.address

    def _carry_out(self, prepared: Prepared | Load | Forward | Refused | Pass | None, head: bytes, end: int) -> bool:
        """Act on the decision for the head at the front (`end`: where it ends). False: stop processing for now."""
        if isinstance(prepared, Load):
            if not self.loads:
                self.loaded_at = self.server.shared.engine.store.forgotten
            self.loads += 1
            self.busy = True
            self.loop.create_task(refuse.before_head(self, self._load(prepared))).add_done_callback(self.done)
            return False
        self.loads = 0
        if prepared is None:
            self.hand_off()
            return False
        self.buf = self.buf[end + 4 :]
        self.deadline.disarm()
        if isinstance(prepared, Forward):
            self.busy = True
            relay.start(self, prepared, head)
            return False
        self.head_done()
        if isinstance(prepared, Pass):
            passing.start(self, prepared)
            return False
        if isinstance(prepared, Refused):
            return refuse.refused(self, prepared, time.monotonic())
        return self._answer(prepared, head)

    def head_done(self) -> None:
        """The head at the front is answered (or handed over): what was kept while it was decided again goes (a
        retried forward's count, its admission, a variant's second decision); a head not decided again begins its
        tries afresh (an identical head on a keep-alive connection is another request)."""
        if not self.again:
            self.tries = None
        if self.retried.forwards:  # its unreached owners stay, for the log line of its answer still to come
            self.retried = relay.Retried(0, self.retried.unreached)
        self.admitted, self.again, self.named = None, False, None

    async def _load(self, load: Load) -> None:
        """Read what the lookup needs from the disk tier (off the loop), so the same head can be decided again."""
        store = self.server.shared.engine.store
        if load.entry_key is None:
            await store.get_record(load.primary)
        else:
            await store.get_meta(load.entry_key)

    def _answer(self, p: Prepared, raw: bytes) -> bool:
        """Answer at once from memory; or start reading from disk. False: stop processing for now."""
        t0 = time.monotonic() if p.began is None else p.began
        if p.hit.use is Use.STALE_WHILE_REVALIDATE:
            self.server.shared.engine.revalidate_in_background(p.hit.req, p.hit.meta)
        way = self.server.cork.way(self, p)  # whole from memory (held with the read's others), or which way else
        if way is cork.MULTIPART:
            return multipart.answer(self, p, raw, t0)
        if way is cork.STREAM:
            return diskhit.stream(self, p, raw, t0)
        if way is cork.DISK:
            return diskhit.answer(self, p, raw, t0)
        parts = cast("list[memoryview]", way)
        self.send(p, parts, t0, p.hit.last - p.hit.first + 1 if p.slices else 0)
        return p.keep_alive.persists

    # What a response needs from its connection, here or in diskhit: wait for the client, count, log, close.

    async def drain(self) -> None:
        self.drained = self.loop.create_future()
        await self.drained

    def done(self, task: asyncio.Task[None]) -> None:
        self.ended(None if task.cancelled() else task.exception())

    def ended(self, exc: BaseException | None) -> None:
        """A task, or a forward sent at once (relay.start), ended; failed (`exc`): the connection is aborted."""
        self.busy = False
        if exc is not None:
            if not isinstance(exc, ConnectionError):
                log.warning("fast path: aborting the connection: %r", exc)
            self.abort()
            return
        if self.transport is None:
            return
        if not self.closing or self.started is not None or self.again:  # a head let in before a drain is answered
            self._process()
        if self.closing and not self.busy and self.transport is not None:  # draining: its last answer is out
            self.transport.close()

    def send(self, p: Prepared, parts: list[memoryview], t0: float, memory: int, now: bool = False) -> None:
        """Write the answer whole (`memory`: its body bytes from the memory tier; `now`: Cork.write's); count it."""
        transport = self.transport
        if transport is None:
            return
        head, nbytes = head_at(p, time.time()), sum(map(len, parts))  # map: half a generator's cost
        self.server.cork.write(self, p.keep_alive.persists, [head, *parts], len(head) + nbytes, now)
        self.sent(p, t0, nbytes, memory)
        self.finished(p, nbytes, t0, counted=True)

    def sent(self, p: Prepared, t0: float, nbytes: int = 0, memory: int = 0) -> None:
        """The head is out: count the request and its time to first byte, in one update with its body's bytes when
        they went with it (`nbytes`; `memory` of them read from the memory tier): 0 when they follow (finished)."""
        self.first_byte = now = time.monotonic()
        # A hop's bytes reach its viewer through the node that forwarded it, counted there.
        p.tally.answer.add(now - t0, nbytes if p.hit.viewer is None else 0, memory)
        if p.cause is not None and p.status is not CacheStatus.HIT:
            observe.misses_counter(p.hit.site.name, p.cause).inc()

    def finished(
        self, p: Prepared, nbytes: int, t0: float, cut: bool = False, counted: bool = False, asked: tuple[str, ...] = ()
    ) -> None:
        """The body is out, or `cut` short: its site bytes counted (unless `counted` with its head: sent), its line
        logged (status 0 when cut, as ever), naming whom its fill asked and those its reads met asked (`asked`)."""
        shared = self.server.shared
        hit = p.hit
        if hit.viewer is None and not counted:  # a hop's are counted by the node that forwarded it (sent)
            p.tally.site_bytes.inc(nbytes)
        if shared.access.enabled:
            t = observe.new_trace()
            t.t0, t.site, t.status, t.for_peer = t0, hit.site.name, p.status, hit.viewer is not None
            t.origin_ms, t.ttfb = p.origin_ms, max(self.first_byte - t0, 0.0)
            if p.addr is not None or asked:  # a hit asked nobody
                for addr in (p.addr, *asked):
                    t.sources.asked(addr)
            client = hit.viewer or self.client  # a hop's viewer, as a node of the cluster judged it
            req = hit.req
            fields, rng = req.headers, p.range_field
            line = observe.Line.of(client, p.method, req.host, req.key.full_target, fields, p.keep_alive, rng)
            way = p.way or (_UPSTREAM if p.status is CacheStatus.HIT else observe.upstream(p.status, metrics.Sources()))
            observe.log_line(
                shared.access, t, line, 0 if cut else hit.status, nbytes, shared.node, way, self.retried.unreached
            )
        if not p.keep_alive.persists and self.transport is not None:
            self.closing = True
            self.transport.close() if cut else linger.close(self)  # a cut one is aborted (done)

    # --- hand-off, timers, closing -------------------------------------------------------------------------

    def hand_off(self) -> None:
        """aiohttp's protocol takes this connection over, with every byte not answered yet."""
        transport = self.transport
        if transport is None:
            return
        self.deadline.cancel()
        self.server.gone(self)
        if self.write_timer is not None:
            self.write_timer.cancel()
        data, self.buf, self.transport = self.buf, b"", None
        _HANDED_OFF.inc(self.server.settings.answers)  # none counted with the fast path off: none were its
        adopted, self.adopted = self.adopted, None
        admitted = self.admitted
        self.head_done()
        closed = self.server.hand_over(transport, self.declared, adopted, admitted)
        declared, server = self.declared, self.server
        # With the fast path off (a PROXY listener's header read), aiohttp keeps the connection to the end.
        back = (lambda t, d: server.take_back(t, declared, d)) if server.settings.answers else None
        proto = HeadGuard(server.fallback(), server.settings.header_timeout, closed, back)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if not transport.is_reading() and not self.eof:
            # aiohttp bounds what it reads ahead itself: it parses at most 32 pipelined requests, keeps the
            # rest of one read unparsed, and stops reading until its handler catches up.
            transport.resume_reading()
        if data:
            proto.data_received(data)
        if self.eof:
            proto.eof_received()

    def taken_back(self, declared: str | None, data: bytes) -> None:
        """This connection comes back from aiohttp (HeadGuard) with the first bytes of its next request."""
        if declared is not None:  # the client its PROXY header named, as before the hand-off
            self.address = self.client = self.declared = declared
        self.data_received(data)

    def _watched(self) -> bool:
        """Does the deadline still apply: open, and not busy answering (which bounds itself)?"""
        return self.transport is not None and not self.busy

    def _deadline_passed(self, kind: str) -> None:
        assert self.transport is not None  # _watched
        if kind == "head" and self.buf:  # a head begun and not finished in time
            metrics.HEADER_TIMEOUTS.inc()
            self.transport.write(encode.timed_out(self.server.date()))
            return linger.close(self)  # the rest of it may still come
        linger.close_idle(self)

    def _write_timed_out(self) -> None:
        self.write_timer = None
        metrics.SLOW_CLIENTS.inc()
        self.abort()

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
