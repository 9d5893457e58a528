"""A forward the full handler sends again, because its connection to the owner broke before any answer, is judged
again as the first attempt was: a purge applied here meanwhile keeps it from an owner that lacks the purge.

aiohttp sends a GET or HEAD once more, inside one request call, when its connection drops before the answer (a
kept-alive connection the peer had closed). Real in-process clusters (tests/e2e/test_purge_catchup): the forwarding
node, without the fast path, reaches the owner's client port through a relay that holds one request and drops its
connection unanswered once the purge has been applied here; the owner, cut from every purge log, still holds the
bytes the purge removed. The fast path's relay asks again on each attempt too (test_purge_forward).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

from tests.e2e.procs import free_port
from tests.e2e.test_purge_catchup import NEW, OLD, WAIT, change, cluster
from tests.e2e.test_purge_forward import PEER, answered_here, owned_by
from tests.e2e.test_purge_peers import told
from tests.origin import Origin


class Dropping:
    """127.0.0.1:port -> 127.0.0.1:target, except that once armed with a request's first line, the connection that
    carries it is held (`holding` is set) until `drop` is set, then closed with nothing sent on or answered."""

    def __init__(self, target: int) -> None:
        self.port, self.target = free_port(), target
        self.armed: bytes | None = None
        self.holding, self.drop = asyncio.Event(), asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def down() -> None:
            with contextlib.suppress(OSError):
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        task = asyncio.create_task(down())
        self._tasks.add(task)
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if self.armed is not None and self.armed in data:
                        self.armed = None
                        self.holding.set()
                        await self.drop.wait()
                        break  # never sent on: the owner never sees this attempt
                    up_writer.write(data)
                    await up_writer.drain()
        finally:
            up_writer.close()
            writer.close()
            task.cancel()
            self._tasks.discard(task)


async def test_a_forward_aiohttp_sends_again_after_a_purge_is_answered_here_not_relayed_from_an_owner_that_lacks_it(
    origin: Origin, tmp_path: Path
) -> None:
    async with cluster(origin, tmp_path) as c:
        x, n = 0, 1
        nodes = c.configs[n].cluster.nodes  # type: ignore[union-attr]
        relay = Dropping(int(nodes[x].address.rsplit(":", 1)[1]))
        await relay.start()
        try:
            await c.stop(n)  # n forwards x's objects with the full handler, through the relay
            through = tuple(replace(m, address=f"127.0.0.1:{relay.port}") if i == x else m for i, m in enumerate(nodes))
            settings = replace(c.configs[n].cluster, nodes=through)  # type: ignore[type-var]
            c.configs[n] = replace(c.configs[n], fast_path=False, cluster=settings)
            await c.start(n)
            await c.settled()
            path = owned_by(c, x, "/retry/a")
            origin.put(path, OLD, etag='"v1"')
            status, headers, got = await c.edge(n).get(path)
            assert (status, got, headers["Cache-Status"].endswith(PEER)) == (200, OLD, True)  # x holds it
            for other in (n, 2):  # x reads neither purge log (node 2's would have n's purge soon): x lacks it
                await c.relays[x, other].cut()
            change(origin, path)
            relay.armed = f"GET {path} ".encode()
            viewer = asyncio.create_task(c.edge(n).get(path))
            async with asyncio.timeout(WAIT):
                await relay.holding.wait()  # the first attempt, judged before the purge, is on its way to x
            await told(c, n, {"url": f"http://video.test{path}"})  # applied here; x lacks it
            relay.drop.set()  # its connection drops unanswered: aiohttp sends it again, on a new one
            async with asyncio.timeout(WAIT):
                status, headers, got = await viewer
            assert (status, got[:20], headers["Cache-Status"]) == (200, NEW[:20], "edgecache; fwd=uri-miss; stored")
            assert got == NEW
            assert origin.hits[path] == 2
            await answered_here(c, n, path, "edgecache; hit")
        finally:
            await relay.close()
