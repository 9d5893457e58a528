"""The pool of connections to peers (proxy.peerpool), against a real listener on 127.0.0.1: its bound holds, and a
connection handed to a waiter that is cancelled in the same turn (its connect timeout) goes on to the next one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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


class _Seen:
    """An Exchange that keeps what happened to it."""

    def __init__(self) -> None:
        self.error: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()

    def head(self, status: int, reason: str, fields: list[tuple[str, str]], until_close: bool) -> None:
        pass

    def body(self, piece: bytes) -> None:
        pass

    def done(self, keep: bool) -> None:
        pass

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
