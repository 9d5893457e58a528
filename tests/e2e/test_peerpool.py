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
