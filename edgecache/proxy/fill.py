"""Single-flight fills: one origin request fills a run of slices, and every waiting client streams from it.

A Fill owns one origin response. Its body is cut into slices as it arrives, whether its length is known or not; a
reader of slice i gets bytes as soon as they are in (first byte long before the slice is complete). Complete slices
go to the store when the response is storable. Readers that come late find the slice in the store instead.

What a fill holds is bounded whatever the body's size (`bound`): a fill of a run of slices holds that run; any other
fill lets go of slices behind it (once stored, or once its private reader has them) and its producer waits for
room before taking more of the body.

The registry maps (entry key, slice index) to the fill producing it, so N concurrent misses on one slice make
exactly one origin request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from edgecache import metrics
from edgecache.core import lookaside
from edgecache.core.entry import ObjectMeta
from edgecache.core.headers import Headers
from edgecache.core.status import CacheStatus
from edgecache.errors import OriginError
from edgecache.proxy.expecting import Expected, Expecting
from edgecache.proxy.slicebuf import Parts, view_of

log = logging.getLogger(__name__)
_FROM_ORIGIN = metrics.BYTES_SERVED.labels("origin")

# A fill of a whole object (no validator, Range ignored, or a length not known yet) keeps this many complete slices
# in its own buffers behind the newest, for readers a little behind; older ones are only in the store, so memory
# per fill stays bounded whatever the object's size (Fill.bound). One of a body of unknown length keeps fewer: most
# such bodies are small, and each fill takes its bound of the worker's fill memory (proxy.fillmemory).
WINDOW = 8
UNKNOWN_WINDOW = 1
PRIVATE_WINDOW = 0  # a private answer's fill reads ahead of its one client by two slices at most
RENEW_SECONDS = 1.0  # a fill's leases are renewed at most this often as its bytes come (revalidating.held_on)


class Released(Exception):
    """The slice is no longer held by the fill: read it from the store."""


@dataclass(frozen=True, slots=True)
class FillHead:
    """What the origin's response head told us, as the handler needs it."""

    status: int
    meta: ObjectMeta  # length may be provisional (-1) for a body of unknown length
    start: int  # absolute offset of the first body byte
    end: int | None  # absolute offset after the last body byte, None when unknown
    store: bool  # slices and metadata go to the store
    shared: bool  # other clients may read this body
    reason: str = ""  # why not stored, for Cache-Status and logs
    entry_key: str = ""  # where the response is stored: the primary key plus its Vary'd request values
    variant: str = ""  # the Vary'd request values of the request that started the fill
    served: Headers = ()  # every end-to-end field, for the request that started the fill only
    peer: str | None = None  # the cluster member whose cache answered instead of the origin (core.lookaside)
    kept: bool = True  # a 304's: the stored copy is updated with it (not when another version replaced it)
    worker: CacheStatus | None = None  # a 304's read from another worker's origin request's copy: core.status.of_304


def fill_detail(head: FillHead, spread: bool) -> str:
    """The Cache-Status detail of a miss's answer from its fill's head: the peer's cache that answered instead of
    the origin (a `spread` copy's owner, or the previous owner a look-aside asked), else why it is not stored."""
    if head.peer is not None:
        return "peer" if spread else lookaside.DETAIL
    return unstored(head)


def unstored(head: FillHead) -> str:
    """Why the answer a fill brings is not stored ("" when it is): the Cache-Status detail of a miss answered from
    it, or passed through for want of it (serving.from_fill)."""
    return "" if head.store else head.reason


def answered_from(head: FillHead, ours: bool) -> ObjectMeta:
    """What a miss's answer is built from: the head's metadata, with every end-to-end field for the request that
    started the fill (fields a shared cache keeps from everyone else, such as private="f", are its alone)."""
    return replace(head.meta, headers=head.served) if ours and head.served else head.meta


@dataclass(frozen=True, slots=True)
class Adopted:
    """A fill the fast path started for a miss it then handed to the full handler (proxy.coldmiss), with what the
    miss's log line needs from before the hand-over."""

    fill: Fill
    primary: str  # the request's key: the fill is that request's, and no other's
    began: float  # monotonic, when the miss began
    origin_ms: float | None  # how long the origin took to send the head (None: it had not, or failed)
    validating: ObjectMeta | None = None  # the stored entry the fill revalidates (None: a miss of nothing stored)
    expected: Expected | None = None  # the request, as the fill's reader until it reads

    def let_go(self) -> None:
        """Read, or not needed after all: nobody else reads it."""
        self.fill.abandon()
        if self.expected is not None:
            self.expected.release()


class Fill:
    def __init__(self, entry_key: str, first_index: int, last_index: int | None, slice_size: int) -> None:
        self.entry_key = entry_key
        self.first_index = first_index
        self.last_index = last_index  # None: the whole object
        self.slice_size = slice_size
        self.head: asyncio.Future[FillHead] = asyncio.get_running_loop().create_future()
        self.asked_at = time.time()  # no later than the origin was asked: what a soft purge is judged against
        # The request whose slice read started it (its served bytes' metrics.Sources, reading._start_for): its own
        # later slices read it as that request's; any other reader joined another request's fetch.
        self.opener: metrics.Sources | None = None
        self.addr: str | None = None  # whom it asked, once answered (OriginResponse.addr): its readers' upstream_addr
        self._bufs: dict[int, Parts | bytes] = {}
        self._complete: set[int] = set()
        self._durable: set[int] = set()  # complete slices the store has, while the fill still holds them
        self._in_memory: set[int] = set()  # those memory alone has: kept past let_go (mark_durable)
        # Complete slices the store refused (a full disk, one out of service, its admission): a stream cannot read
        # one back once let go, so it is held until every stream has read it (the slowest then paces the fill).
        self._unstored: set[int] = set()
        self._pos = 0  # absolute offset of the next byte to arrive
        self._held = 0  # bytes in self._bufs
        self.peak = 0  # the most bytes self._bufs ever held: the bound's own witness
        self.from_store: Callable[[int], Awaitable[bytes | None]] | None = None  # a complete slice it let go
        self._reader_gone = False
        self._error: BaseException | None = None
        self._done = False
        self._changed = asyncio.Event()
        self.start = 0  # absolute offset of the first body byte
        self.backpressure = False  # one private reader: the producer waits for it instead of dropping slices
        # Told when the producer starts waiting for its private reader (True) and when it goes on (False): the
        # origin connection is set aside meanwhile (origin.OriginResponse.set_aside).
        self.waiting_for_reader: Callable[[bool], None] | None = None
        self.streamed = False  # whoever started it streams the body should it turn out private
        # Its answer may come from a peer's cache (a look-aside, a hot copy's owner), judged for the request that
        # started it alone: true until it asks the origin (Engine._ask; who may join it: fillhead.answers).
        self.peer_first = False
        self.leases: dict[int, str] = {}  # slice index -> the lease a reader took for this fill to fetch it
        self.renew_at = time.monotonic() + RENEW_SECONDS  # when its leases are next renewed: none just taken
        self._read_pos = 0
        # A fill of the whole object runs while a client reads it (Engine.unread): once one has read it, or the
        # request that started it has gone, it ends at the first slice boundary nobody reads past. Not a
        # background revalidation's (`background`), which nobody reads and which brings the object whole.
        self.attended = False
        self.background = False
        self.readers = 0  # read() and stream() iterations under way
        self.expecting = Expecting(self._wake)  # requests that joined it and are still to read it
        self._open_ended = False  # the head gave no length: its readers stream it from its first byte
        self._stopped = False
        # Complete slices go to the store; not those of a body of unknown length past the engine's bound
        # (Engine.max_unknown): the fill then lets go of what every stream has read, and the slowest paces it.
        self.kept = True
        self._streams: dict[object, int] = {}  # where each stream() is
        self.window = WINDOW
        # Asks fill memory for one slice more of window, without waiting (a body of unknown length: _widen).
        self.grow: Callable[[], bool] | None = None
        self.grown = 0  # bytes of fill memory taken so

    # --- producer side (the fill task) ---------------------------------------------------------------------

    async def heard(self) -> FillHead:
        """The head, for one reader. Shielded: every reader of the fill awaits the one `head` future, and a reader
        cancelled while awaiting it directly (a client's timeout, a TaskGroup) cancelled that future, failing every
        other reader with CancelledError and leaving the head the fill sets nowhere (test_head_wait_cancelled)."""
        return await asyncio.shield(self.head)

    def set_head(self, head: FillHead) -> None:
        self._pos = self.start = self._read_pos = head.start
        self.backpressure = not head.shared
        self._open_ended = head.end is None
        if not self.head.done():
            self.head.set_result(head)

    @property
    def bound(self) -> int:
        """The most body bytes this fill holds at once: its run, or a window of slices behind the newest."""
        if self.last_index is not None:
            return (self.last_index - self.first_index + 1) * self.slice_size
        return (self.window + 2) * self.slice_size

    def held_at_most(self, head: FillHead) -> int:
        """What the fill holds at most with this head: its bound, or its body when that is less (a 304: nothing)."""
        if head.status == 304:
            return 0
        if head.end is None:
            return self.bound
        return min(self.bound, head.end - head.start)

    async def room(self) -> None:
        """Until one more slice's worth of body fits under `bound` (the fill's producer calls it before each
        piece of at most a slice). Raises OriginError when the private reader it waits for has left."""
        self._release_old()  # the slice now arriving may have moved the window on
        while self.last_index is None and self._held + self.slice_size > self.bound:
            if self._reader_gone and self.backpressure:
                raise OriginError("the fill's only reader left")
            if self.backpressure and self.waiting_for_reader is not None:
                await self._for_reader(self.waiting_for_reader)
            else:
                await self._changed.wait()
            self._release_old()  # a stream moved on, or left

    async def _for_reader(self, told: Callable[[bool], None]) -> None:
        told(True)
        try:
            await self._changed.wait()
        finally:
            told(False)

    def feed(self, chunk: bytes | memoryview, on_complete: Callable[[int, bytes], None]) -> None:
        """Append body bytes; call on_complete(index, data) for each slice this chunk finishes."""
        size = self.slice_size
        view = memoryview(chunk)
        while view:
            index, offset = divmod(self._pos, size)
            take = min(len(view), size - offset)
            buf = self._bufs.get(index)
            if buf is None:
                buf = self._bufs[index] = Parts()
            assert isinstance(buf, Parts)
            buf.append(chunk if take == len(chunk) else view[:take])
            view = view[take:]
            self._pos += take
            self._held += take
            self.peak = max(self.peak, self._held)
            if self._pos % size == 0:
                self._finish_slice(index, on_complete)
        self._wake()

    def finish(self, on_complete: Callable[[int, bytes], None]) -> None:
        """The body ended where it should: the last, short slice is complete too."""
        index = (self._pos - 1) // self.slice_size if self._pos else 0
        buf = self._bufs.get(index)
        if isinstance(buf, Parts):
            self._finish_slice(index, on_complete)
        elif buf is None and self._pos == 0:
            self._bufs[0] = b""
            self._complete.add(0)
            on_complete(0, b"")
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if isinstance(error, OriginError) and error.tried is None:  # an answer the fill refused: who sent it
            error.tried = self.addr
        self._error = error
        self._done = True
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # a fill nobody waits on must not warn "exception never retrieved"
        self._wake()

    def stop(self) -> None:
        """Nobody reads the fill any more: it ends at a slice boundary, every complete slice stored. A reader that
        comes for a slice it never brought reads it as stored, or starts a fill of its own (Released)."""
        self._stopped = self._done = True
        self._wake()

    def _finish_slice(self, index: int, on_complete: Callable[[int, bytes], None]) -> None:
        buf = self._bufs[index]
        data = buf.join() if isinstance(buf, Parts) else buf
        self._bufs[index] = data
        self._complete.add(index)
        on_complete(index, data)
        self._release_old()

    def let_go(self) -> None:
        """The producer has ended: complete slices the store has on disk are dropped here, and readers still on
        them read them from the store (Released, from_store), whatever the fill's shape."""
        for i in [i for i in self._durable if i in self._bufs and i not in self._in_memory]:
            self._held -= len(self._bufs.pop(i))
        self._durable.clear()
        self._in_memory.clear()
        self._wake()

    def mark_durable(self, index: int, stored: bool = True, in_memory: bool = False) -> None:
        """The store has slice `index` on disk: the fill may drop its own copy once it is out of the window. Not
        `stored` (the disk refused it): only once every stream has read it too. `in_memory`: memory alone has it
        (exclusive tiers, a spread copy), and may evict it to nowhere (an exclusive spill judged stale after a
        purge, one past the write-back's bound): dropped out of the window as a stored slice, but not at the end
        (let_go), so a reader still holding the fill reads it here. Dropped there, a slow client's reader found it
        nowhere, fetched it again under its own key, stale in turn after a site purge, three times: 502 "slice N
        could not be read" (test_memory_only_slice). Memory's own bytes object while memory holds it."""
        (self._durable if stored else self._unstored).add(index)
        if in_memory:
            self._in_memory.add(index)
        self._release_old()
        self._wake()

    def _release_old(self) -> None:
        if self.last_index is not None:
            return  # a fill of a run keeps its few slices
        newest = (self._pos - 1) // self.slice_size
        if self.backpressure:  # a private fill: what its one reader has read is needed no more
            old = [i for i in self._bufs if (i + 1) * self.slice_size <= self._read_pos]
        elif not self.kept:  # nothing more is stored: what every stream has read is needed no more, nor the stored
            floor = self._floor()
            read = {i for i in self._bufs if (i + 1) * self.slice_size <= floor}
            old = list(read | {i for i in self._durable if i < newest - self.window and i in self._bufs})
        else:  # stored slices behind a window kept for readers that lag a little
            self._widen(newest)
            old = [i for i in self._durable if i < newest - self.window and i in self._bufs]
            if self._unstored:  # and those the store refused once every stream has read them
                floor = self._floor()
                behind = newest - self.window
                old += [i for i in self._unstored if i < behind and (i + 1) * self.slice_size <= floor]
        for i in old:
            if (buf := self._bufs.pop(i, None)) is not None:
                self._held -= len(buf)
            self._durable.discard(i)  # only slices still held are kept here, so each pass is short
            self._in_memory.discard(i)
            self._unstored.discard(i)

    def _floor(self) -> int:
        """Where the stream furthest behind is: a request still to read a body of unknown length, or one not
        stored (Expected), will stream it from its first byte."""
        if (self._open_ended or not self.kept) and self.expecting:
            return self.start
        return min(self._streams.values(), default=self._pos)

    def _widen(self, newest: int) -> None:
        """A body of unknown length is never fetched again by range: a slice it lets go before a stream has read it
        is read back from the store, and one the store no longer has cuts that stream. So while a stream is behind
        the window, the window grows a slice at a time, up to WINDOW, as far as fill memory has room now."""
        if self.grow is None:
            return
        floor = self._floor()
        while self.window < WINDOW and floor < (newest - self.window) * self.slice_size and self.grow():
            self.window += 1
            self.grown += self.slice_size

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def failed(self) -> bool:
        """It brings no more bytes than it has: failed, or stopped (no request may join it)."""
        return self.done and (self._error is not None or self._stopped)

    @property
    def received(self) -> int:
        return self._pos

    def completed(self, index: int) -> bool:
        return index in self._complete

    def covers(self, index: int) -> bool:
        if index < self.first_index:
            return False
        return self.last_index is None or index <= self.last_index

    # --- consumer side --------------------------------------------------------------------------------------

    async def read(self, index: int, lo: int, hi: int) -> AsyncIterator[memoryview]:
        """Bytes lo..hi (exclusive, offsets within slice `index`) as they arrive.

        Raises the fill's error if it fails before they are in, and Released if the fill dropped the slice.
        """
        base = index * self.slice_size
        self.readers += 1
        self.attended = True
        try:
            while lo < hi:
                buf = self._bufs.get(index)
                have = len(buf) if buf is not None else 0
                if have > lo:
                    assert buf is not None
                    piece = view_of(buf, lo, hi)
                    yield piece
                    lo += len(piece)
                    continue
                if self._error is not None:
                    raise self._error
                if index in self._complete or (buf is None and self._pos > base + lo) or self._stopped:
                    raise Released(f"slice {index} released")
                if self._done:
                    raise OriginError("origin body ended before the requested bytes")
                await self._changed.wait()
        finally:
            self.readers -= 1
            if not self.readers:
                self._wake()  # idle() may be waiting

    async def stream(self, expected: Expected | None = None) -> AsyncGenerator[memoryview, None]:
        """The whole body from its first byte to its end, as it arrives: the private reader of a fill, or a reader
        of a body of unknown length. A complete slice the fill let go is read back through `from_store`. Its bytes
        are the origin's as served bytes (a peer's cache answers only what it stores whole: core.lookaside), counted
        here for both request paths."""
        self.readers += 1
        self.attended = True
        try:
            async for piece in self._stream(expected):
                _FROM_ORIGIN.inc(len(piece))
                yield piece
        finally:
            self.readers -= 1
            self.abandon()
            self._wake()  # a producer paced by its streams (kept False) may go on

    async def idle(self) -> None:
        """Until no read() or stream() is under way."""
        while self.readers:
            await self._changed.wait()

    def abandon(self) -> None:
        """The private reader is gone, or will never come (its request went another way): the producer waits for
        nobody now, so let it stop. Nothing for a shared fill, whose producer waits for no reader; one left before
        the head came is remembered, for a head that turns out private."""
        self.attended = True
        if not self._done:
            self._reader_gone = True
            self._wake()

    async def _stream(self, expected: Expected | None) -> AsyncIterator[memoryview]:
        pos = self.start
        me = object()
        self._streams[me] = pos
        if expected is not None:  # a stream now, where it was counted as one to come
            expected.release()
        try:
            async for piece in self._pieces(me, pos):
                yield piece
        finally:
            # Closed after stream()'s own end (finalised by the loop), whose wake a producer paced by its streams
            # (not kept) saw with this one still behind: woken again, it finds it gone.
            del self._streams[me]
            self._wake()

    async def _pieces(self, me: object, pos: int) -> AsyncIterator[memoryview]:
        while True:
            index, offset = divmod(pos, self.slice_size)
            buf = self._bufs.get(index)
            have = len(buf) if buf is not None else 0
            if have > offset:
                assert buf is not None
                piece = view_of(buf, offset, have)
                yield piece
                pos += len(piece)
                self._streams[me] = pos
                if self.backpressure or not self.kept or self._unstored:  # the producer may wait for this stream
                    self._read_pos = pos
                    self._release_old()
                    self._wake()
                continue
            if self._error is not None:
                raise self._error
            if self._stopped:  # never a short body passed as whole
                raise OriginError("the fill stopped before the end of the body")
            if self._done and pos >= self._pos:
                return
            if buf is None and self._pos > pos:
                data = await self.from_store(index) if self.from_store is not None else None
                if data is None or len(data) <= offset:
                    raise OriginError("fill dropped bytes its reader still needed")
                yield memoryview(data)[offset:]
                pos += len(data) - offset
                continue
            await self._changed.wait()
