"""The pool of connections to peers (proxy.peerpool), against a real listener on 127.0.0.1: its bound holds, and a
connection handed to a waiter that is cancelled in the same turn (its connect timeout) goes on to the next one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from edgecache.proxy import peerpool
from edgecache.proxy.exchange import Dropped
from edgecache.proxy.peerpool import PeerPool


@contextlib.asynccontextmanager
async def listener() -> AsyncIterator[str]:
    writers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for w in writers:
            w.transport.abort()
        await server.wait_closed()


async def test_a_connection_handed_to_a_cancelled_waiter_goes_to_the_next() -> None:
    async with listener() as address:
        pool = PeerPool(limit=1, connect_timeout=5.0, read_timeout=5.0)
        try:
            for _ in range(2):  # twice: the pool is as good as new after the first round
                first = await pool.acquire(address)
                assert pool.open[address] == 1
                cancelled = asyncio.create_task(pool.acquire(address))
                await asyncio.sleep(0)  # it waits: the one place is taken
                assert len(pool.waiters[address]) == 1
                pool.release(first)  # handed to the waiter...
                cancelled.cancel()  # ...which is cancelled before it runs again
                async with asyncio.timeout(2):
                    again = await pool.acquire(address)  # not stuck behind a lost connection
                assert again is first
                assert pool.open[address] == 1
                assert cancelled.cancelled()
                pool.release(again)
        finally:
            pool.close()
            await asyncio.sleep(0)


class _Seen(Dropped):
    """An Exchange (proxy.exchange) that keeps its failure, and drops its answer as Dropped does."""

    def __init__(self) -> None:
        self.error: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()

    def failed(self, error: Exception, before_head: bool) -> None:
        self.error.set_result((str(error), before_head))

    def flush(self) -> None:
        pass


async def test_a_peer_that_sends_its_head_a_byte_at_a_time_is_timed_out_as_one_that_sends_nothing() -> None:
    """Each byte came before the read timeout, and each restarted it: the forward waited for as long as the peer
    went on. A head must be whole within the read timeout of the request."""
    sent = 0
    handlers: set[asyncio.Task[None]] = set()

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.05)
        writer.transport.abort()

    async def dribbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await dribble(reader, writer)
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(dribbled, "127.0.0.1", 0)
    pool = PeerPool(limit=1, connect_timeout=5.0, read_timeout=0.5)
    try:
        for _ in range(2):
            conn = await pool.acquire(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
            seen = _Seen()
            conn.send(b"GET / HTTP/1.1\r\nHost: peer\r\n\r\n", seen, head_only=False)  # type: ignore[arg-type]
            async with asyncio.timeout(5):
                reason, before_head = await seen.error
            assert before_head
            assert reason.endswith("timed out"), reason
            assert sent < 200  # the peer was still sending, a byte each 50 ms
            sent = 0
    finally:
        pool.close()
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


class _Kept:
    """An Exchange (proxy.exchange) that keeps the answer it was given."""

    def __init__(self) -> None:
        self.status = 0
        self.body_bytes = b""
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()  # True: done, False: failed

    def head(self, status: int, reason: str, fields: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def body(self, piece: bytes) -> None:
        self.body_bytes += piece

    def done(self, keep: bool) -> None:
        self.ended.set_result(True)

    def failed(self, error: Exception, before_head: bool) -> None:
        self.ended.set_result(False)

    def flush(self) -> None:
        pass


async def test_an_answer_the_peer_began_past_the_last_asked_is_never_given_to_the_next_request() -> None:
    """A peer that begins an answer nobody asked for in the read that ends the last one asked: the connection went
    back to the pool with llhttp holding that answer's first bytes, and the next request sent on it was given the
    rest of that answer as its own (the wrong viewer's bytes). It is a peer talking out of turn: not reused."""
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []
    asked: list[bytes] = []

    async def out_of_turn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        first = not asked
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                asked.append(await reader.readuntil(b"\r\n\r\n"))
                if not first:  # a new connection: answered as asked
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                    await reader.read()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Le")
                await writer.drain()
                asked.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"ngth: 5\r\n\r\nWRONGHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                await writer.drain()
                await reader.read()
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(out_of_turn, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    pool = PeerPool(limit=4, connect_timeout=5.0, read_timeout=5.0)
    try:
        first = await pool.acquire(address)
        one = _Kept()
        first.send(b"GET /1 HTTP/1.1\r\nHost: peer\r\n\r\n", one, head_only=False)  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            assert await one.ended
        assert (one.status, one.body_bytes) == (200, b"first")
        second = await pool.acquire(address)
        two = _Kept()
        second.send(b"GET /2 HTTP/1.1\r\nHost: peer\r\n\r\n", two, head_only=False)  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            answered = await two.ended
        assert (answered, two.status, two.body_bytes) == (True, 200, b"second")
        assert second is not first  # the first connection was closed: the second request went on a new one
        assert [a.split(b" ", 2)[1] for a in asked] == [b"/1", b"/2"]
    finally:
        pool.close()
        server.close()
        for w in writers:  # each handler's read ends with its connection: none is cancelled mid-read
            w.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_connect_cancelled_once_connected_gives_its_place_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect whose time ran out in the turn the connection was made (acquire's connect timeout): asyncio's loop
    closes the new connection and tells its protocol, whose connection_lost gave its place back, and so did the
    connect's own failure: two places for one. The count of the peer's connections fell one below those open each
    time (1 with two open here; clamped at 0), and the pool's bound let as many more be opened. uvloop does not tell
    the protocol. The connection_made below cancels the connecting task in that turn, as the timeout does."""
    made = peerpool.PeerConn
    cancelled: list[peerpool.PeerConn] = []

    class CancelledOnceMade(made):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            cancelled.append(self)
            connecting.cancel()

    async with listener() as address:
        pool = PeerPool(limit=4, connect_timeout=5.0, read_timeout=5.0)
        try:
            kept = [await pool.acquire(address, fresh=True) for _ in range(2)]
            monkeypatch.setattr(peerpool, "PeerConn", CancelledOnceMade)
            connecting = asyncio.create_task(pool.acquire(address, fresh=True))
            with pytest.raises(asyncio.CancelledError):
                await connecting
            monkeypatch.setattr(peerpool, "PeerConn", made)
            async with asyncio.timeout(5):  # until the loop has told it its connection is lost (asyncio's does)
                while cancelled[0].transport is not None:  # noqa: ASYNC110 (a protocol's state: no event)
                    await asyncio.sleep(0.01)
            assert pool.open[address] == 2 == sum(1 for c in kept if c.transport is not None)
        finally:
            pool.close()
            for conn in kept:
                conn.close()
