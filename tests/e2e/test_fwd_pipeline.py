"""Pipelined forwards (proxy.peerpool, proxy.cork): the forwards of one loop turn to one peer go on one connection,
and the owner answers the hits of one read in one write.

A real 3-node cluster for many concurrent forwards (exact bytes, origin hits, few peer connections), and a real
node beside a peer this test scripts, which reads a whole pipelined batch before it answers, for what only a
scripted peer can do on cue: close mid-pipeline, stall on the answer at the front, and show each bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from asyncio.selector_events import _SelectorSocketTransport as Transport
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edgecache.proxy import peerpool
from tests.conftest import make_config, start_edge
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_relay import RING, answers, beside, exchange, owned_by, request
from tests.origin import Origin
from tests.samples import sample_value

Answer = Callable[[int, int, str, asyncio.StreamWriter], Awaitable[None]]  # (connection, index on it, path)


def ok(path: str) -> bytes:
    body = path.encode() * 3
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


class BatchPeer:
    """node2, a socket that reads each request as it comes (a pipelined batch whole) and lets `answer` write."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[list[str]] = []  # each connection's requests, in order
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.serving: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Condition()

    async def __aenter__(self) -> BatchPeer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()
        async with asyncio.timeout(10):  # Python 3.11's wait_closed() does not wait for the connections
            await asyncio.gather(*self.serving, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        serving = asyncio.current_task()
        assert serving is not None
        self.serving.add(serving)
        self.writers.add(writer)
        mine: list[str] | None = None
        number = 0  # the connection's, in the order they carried their first request
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if mine is None:
                        mine, number = [], len(self.seen)
                        self.seen.append(mine)
                    mine.append(head.split(b" ", 2)[1].decode())
                    task = asyncio.create_task(self.answer(number, len(mine) - 1, mine[-1], writer))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    async with self.changed:
                        self.changed.notify_all()
        finally:
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.serving.discard(serving)

    async def batch(self, n: int) -> None:
        """Until some connection carried `n` requests."""
        async with self.changed, asyncio.timeout(10):
            await self.changed.wait_for(lambda: any(len(s) >= n for s in self.seen))


async def viewers(port: int, paths: list[str], method: str = "GET") -> list[bytes]:
    """One connection per path, connected first, then every request written in one go: the node reads them in one
    loop turn, and forwards them as one batch."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in paths]
    for (_, writer), path in zip(conns, paths, strict=True):
        writer.write(request(path, method=method, close=True))

    async def read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            async with asyncio.timeout(20):
                return await reader.read(-1)
        finally:
            writer.close()

    return await asyncio.gather(*(read(r, w) for r, w in conns))


def in_order(peer: BatchPeer) -> Answer:
    """Answers every request whole, each after the ones before it on its connection."""
    turns: dict[int, asyncio.Event] = {}

    async def answer(conn: int, index: int, path: str, writer: asyncio.StreamWriter) -> None:
        if index:
            await turns.setdefault(conn * 1000 + index - 1, asyncio.Event()).wait()
        writer.write(ok(path))
        turns.setdefault(conn * 1000 + index, asyncio.Event()).set()

    return answer


async def test_many_concurrent_forwards_share_few_peer_connections_byte_exact(origin: Origin, tmp_path: Path) -> None:
    configs = cluster_configs(origin, tmp_path)
    paths = [p for p in (f"/pipe/{i}.bin" for i in range(200)) if owner_of(configs, p) != "node1"][:48]
    for i, p in enumerate(paths):
        origin.put(p, os.urandom(4096 + i))
    async with started(configs) as nodes:
        first = nodes[0]
        for p in paths:  # each filled once at its owner
            assert (await first.get(p))[::2] == (200, origin.objects[p].data)
        assert first.fast is not None
        pool = first.fast.peers()
        for _ in range(3):
            heads = await viewers(first.port, paths[:8], "HEAD")  # a HEAD's answer read last on its connection
            raws = await viewers(first.port, paths)
            for p, raw in zip(paths, raws, strict=True):
                assert answers(raw, ["GET"])[0][::2] == (200, origin.objects[p].data), p
            for p, raw in zip(paths[:8], heads, strict=True):
                status, fields, _ = answers(raw, ["HEAD"])[0]
                assert (status, fields["content-length"]) == (200, str(len(origin.objects[p].data))), p
        assert all(origin.hits[p] == 1 for p in paths)
        # 48 forwards at once, to two owners, over far fewer connections than one each (before: one each, 48).
        assert 2 <= sum(pool.open.values()) <= 48 // 2, pool.open


async def test_a_peer_closing_mid_pipeline_sends_the_unanswered_again_and_cuts_the_one_begun(
    origin: Origin, tmp_path: Path
) -> None:
    warm, *paths = [owned_by(RING, "node2", f"/mid{i}/") for i in range(5)]

    async def answer(conn: int, index: int, path: str, writer: asyncio.StreamWriter) -> None:
        if conn or index == 0:  # the warming request's, and every one sent again: whole
            writer.write(ok(path))
        elif index == 4:  # the batch, pipelined behind it: the first answered whole, half the second, and closed
            first, second = peer.seen[0][1:3]
            writer.write(ok(first) + ok(second)[:-5])
            writer.transport.abort()

    async with BatchPeer(answer) as peer, beside(origin, tmp_path, peer) as edge:
        assert (
            answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200
        )  # its connection is pooled
        raws = dict(zip(paths, await viewers(edge.port, paths), strict=True))
        batch = peer.seen[0][1:]
        assert sorted(batch) == sorted(paths)  # the four pipelined on the pooled connection
        assert answers(raws[batch[0]], ["GET"])[0][::2] == (200, batch[0].encode() * 3)
        assert raws[batch[1]].startswith(b"HTTP/1.1 200 OK\r\n")
        assert raws[batch[1]].endswith(ok(batch[1])[-25:-5])  # cut where the peer's answer was: never whole
        for p in batch[2:]:
            assert answers(raws[p], ["GET"])[0][::2] == (200, p.encode() * 3)  # sent again, answered whole
        assert sorted(p for s in peer.seen[1:] for p in s) == sorted(batch[2:])  # only those not begun, once
        # The peer was not marked down: the next forward goes to it.
        assert answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200


async def test_an_answer_that_stalls_holds_up_only_its_batch_and_those_are_sent_again(
    origin: Origin, tmp_path: Path
) -> None:
    warm, *paths = [owned_by(RING, "node2", f"/stall{i}/") for i in range(5)]

    async def answer(conn: int, index: int, path: str, writer: asyncio.StreamWriter) -> None:
        if conn == 0 and index > 0:  # the batch's first stalls past the read timeout, and those behind it with it
            await asyncio.sleep(30)
        writer.write(ok(path))

    async with BatchPeer(answer) as peer, beside(origin, tmp_path, peer, read_timeout=1.0) as edge:
        assert (
            answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200
        )  # its connection is pooled
        raws = dict(zip(paths, await viewers(edge.port, paths), strict=True))
        batch = peer.seen[0][1:]
        assert sorted(batch) == sorted(paths)
        assert answers(raws[batch[0]], ["GET"])[0][0] == 504  # the stalled one: the peer timed out
        for p in batch[1:]:
            assert answers(raws[p], ["GET"])[0][::2] == (200, p.encode() * 3), p  # sent again on new connections
        assert sorted(p for s in peer.seen[1:] for p in s) == sorted(batch[1:])


async def test_the_depth_of_a_pipeline_is_bounded(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peerpool, "DEPTH", 3)
    warm, *paths = [owned_by(RING, "node2", f"/deep{i}/") for i in range(10)]
    peer = BatchPeer(lambda *a: answer(*a))
    answer = in_order(peer)
    async with peer, beside(origin, tmp_path, peer) as edge:
        assert (
            answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200
        )  # its connection is pooled
        raws = await viewers(edge.port, paths)
        for p, raw in zip(paths, raws, strict=True):
            assert answers(raw, ["GET"])[0][::2] == (200, p.encode() * 3), p
        batches = [len(s) for s in peer.seen]
        batches[0] -= 1  # the warming request, answered before
        assert max(batches) == 3  # pipelined, never deeper (before: one request a connection at a time)
        assert sum(batches) == 9


async def test_forwards_waiting_for_a_peer_are_bounded(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peerpool, "WAITING", 1)
    gate = asyncio.Event()
    paths = [owned_by(RING, "node2", f"/wait{i}/") for i in range(3)]

    async def answer(conn: int, index: int, path: str, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        writer.write(ok(path))

    async with BatchPeer(answer) as peer, beside(origin, tmp_path, peer, max_connections=1) as edge:
        held = asyncio.create_task(exchange(edge.port, request(paths[0], close=True)))
        await peer.batch(1)  # the site's share of connections (one) is held
        # Two more in one turn: the first to start waits for the share, the other is past the bound: 503 at once.
        conns = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in paths[1:]]
        for (_, writer), path in zip(conns, paths[1:], strict=True):
            writer.write(request(path, close=True))
        reads = {asyncio.create_task(r.read(-1)): p for (r, _), p in zip(conns, paths[1:], strict=True)}
        async with asyncio.timeout(10):
            done, pending = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        refused = done.pop()
        assert answers(refused.result(), ["GET"])[0][0] == 503
        gate.set()  # the one that waited is answered now
        async with asyncio.timeout(10):
            first, later = await held, await pending.pop()
        for _, writer in conns:
            writer.close()
        waited = paths[1] if reads[refused] == paths[2] else paths[2]
        assert answers(first, ["GET"])[0][::2] == (200, paths[0].encode() * 3)
        assert answers(later, ["GET"])[0][::2] == (200, waited.encode() * 3)
        assert sorted(p for s in peer.seen for p in s) == sorted([paths[0], waited])


async def test_an_owner_answers_the_hits_of_one_read_in_one_write(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [f"/cork/{i}" for i in range(20)]
    for i, p in enumerate(paths):
        origin.put(p, bytes([i]) * 3000)
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        for p in paths:
            assert (await edge.get(p))[::2] == (200, origin.objects[p].data)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writes = _spy_writes(monkeypatch, writer.get_extra_info("sockname"))
        writer.write(b"".join(request(p, close=p == paths[-1]) for p in paths))
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
        writer.close()
        got = answers(raw, ["GET"] * len(paths))
        assert [(s, b) for s, _, b in got] == [(200, origin.objects[p].data) for p in paths]
        # The 19 answers held, then written with the last, which closes its connection (before: 20 writes).
        assert writes == [20 * 2], writes


async def test_pipelined_hits_of_every_kind_are_answered_in_order(origin: Origin, tmp_path: Path) -> None:
    """Answers held for one write (proxy.cork) never overtake, nor fall behind, one written another way between
    them: every third object's slice is only on disk, every third is asked for two ranges (multipart, written by
    proxy.multipart itself), and the twelve answers of one read come back in the order asked."""
    paths = [f"/mix/{i}" for i in range(12)]
    for i, p in enumerate(paths):
        origin.put(p, bytes([i]) * 1000 + bytes(range(256)) * 8)
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        memory = edge.node.store.memory
        names: dict[str, set[str]] = {}
        for p in paths:
            before = {k for k, _ in memory.hottest()}
            assert (await edge.get(p))[::2] == (200, origin.objects[p].data)
            names[p] = {k for k, _ in memory.hottest()} - before
        for p in paths[1::3]:
            assert names[p]
            for name in names[p]:
                memory.delete(name)
        two = "Range: bytes=0-9,1000-1009"
        asked = [request(p, *([two] if i % 3 == 2 else [])) for i, p in enumerate(paths)]
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"".join(asked) + request(paths[0], close=True))
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
        writer.close()
        got = answers(raw, ["GET"] * (len(paths) + 1))
        for i, (p, (status, fields, body)) in enumerate(zip([*paths, paths[0]], got, strict=True)):
            data = origin.objects[p].data
            if i % 3 == 2 and i < len(paths):
                assert (status, fields["content-type"].split(";")[0]) == (206, "multipart/byteranges"), i
                assert (data[:10] in body, data[1000:1010] in body, body.count(b"Content-Range")) == (True, True, 2)
            else:
                assert (status, body) == (200, data), (i, status, body[:20])
        assert origin.hits == dict.fromkeys(paths, 1)


def _spy_writes(monkeypatch: pytest.MonkeyPatch, client: tuple[str, int]) -> list[int]:
    """How many buffers each write the node makes to the socket of `client` carries: the tests' loop (asyncio's)
    sends each write() at once when nothing waits, one system call each."""
    writes: list[int] = []
    original = Transport.writelines

    def writelines(self: Transport, data: list[bytes | memoryview]) -> None:
        if self.get_extra_info("peername") == client:
            writes.append(len(data))
        original(self, data)

    monkeypatch.setattr(Transport, "writelines", writelines)
    return writes


async def test_a_viewer_that_stops_reading_holds_up_no_request_pipelined_behind_its_answer(
    origin: Origin, tmp_path: Path
) -> None:
    """The answer at the front of a pipeline waits for its viewer, who does not read: the request behind it is sent
    again on another connection at once (PeerConn.pause), not held for the viewer's write timeout."""
    warm, big, small = (owned_by(RING, "node2", f"/slow{i}/") for i in range(3))
    size = 16 * 2**20
    body = b"b" * size
    written = asyncio.Event()

    async def answer(conn: int, index: int, path: str, writer: asyncio.StreamWriter) -> None:
        if path != big:
            if conn == 0 and index > 0:  # behind the big answer on its connection: after it, in order
                await written.wait()
            writer.write(ok(path))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for at in range(0, size, 2**22):  # in pieces: one write of it all would stall the loop
            writer.write(memoryview(body)[at : at + 2**22])
            await asyncio.sleep(0)
        written.set()

    async with BatchPeer(answer) as peer, beside(origin, tmp_path, peer) as edge:
        assert answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200  # pooled
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", edge.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        slow.write(request(big, close=True))  # read first (epoll reports sockets in the order they became ready)
        writer.write(request(small, close=True))
        try:
            async with asyncio.timeout(20):  # the node's write timeout is 60 s: before, it came after that
                raw = await reader.read(-1)
            assert peer.seen[0][1:3] == [big, small]  # pipelined, the big answer at the front
            assert answers(raw, ["GET"])[0][::2] == (200, small.encode() * 3)
            assert [s.count(small) for s in peer.seen] == [1, 1]  # sent again on a connection of its own
            async with asyncio.timeout(30):
                top, _, got = (await slow_reader.read(-1)).partition(b"\r\n\r\n")
            assert (top.split(b"\r\n")[0], got) == (b"HTTP/1.1 200 OK", body)  # and the slow one whole
        finally:
            slow.close()
            writer.close()


async def test_a_range_goes_alone_on_its_connection(origin: Origin, tmp_path: Path) -> None:
    """A range's answer is large: it is not pipelined, nor is anything sent behind it (proxy.relay)."""
    warm, *paths = [owned_by(RING, "node2", f"/alone{i}/") for i in range(5)]
    peer = BatchPeer(lambda *a: answer(*a))
    answer = in_order(peer)
    async with peer, beside(origin, tmp_path, peer) as edge:
        warming = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(4)]
        for _, writer in warming:  # four ranges at once: four connections, pooled
            writer.write(request(warm, "Range: bytes=0-1", close=True))
        for r, w in warming:
            async with asyncio.timeout(20):
                assert answers(await r.read(-1), ["GET"])[0][0] == 200
            w.close()
        assert len(peer.seen) == 4
        conns = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in paths]
        for (_, writer), path in zip(conns, paths, strict=True):  # two ranges first, then two whole objects
            fields = ("Range: bytes=0-99",) if path in paths[:2] else ()
            writer.write(request(path, *fields, close=True))
        async with asyncio.timeout(20):
            raws = [await r.read(-1) for r, _ in conns]
        for _, writer in conns:
            writer.close()
        for p, raw in zip(paths, raws, strict=True):
            assert answers(raw, ["GET"])[0][::2] == (200, p.encode() * 3), p  # the peer ignores Range: a 200
        alone = [s for s in peer.seen if any(p in paths[:2] for p in s)]
        assert all(len([p for p in s if p in paths]) == 1 for s in alone), peer.seen  # each range by itself
        assert max(len([p for p in s if p in paths]) for s in peer.seen) == 2, peer.seen  # the others pipelined


def batches() -> dict[str, float]:
    """edgecache_peer_batch_requests: its count, sum and cumulative buckets."""
    name = "edgecache_peer_batch_requests"
    got = {part: sample_value(f"{name}_{part}") or 0.0 for part in ("count", "sum")}
    for le in ("1.0", "2.0", "3.0", "4.0", "6.0", "8.0", "+Inf"):
        got[le] = sample_value(f"{name}_bucket", {"le": le}) or 0.0
    return got


async def test_each_write_to_a_peer_is_counted_with_the_requests_it_carries(origin: Origin, tmp_path: Path) -> None:
    """edgecache_peer_batch_requests: the warming request alone (a batch of 1), then four pipelined in one write."""
    warm, *paths = [owned_by(RING, "node2", f"/count{i}/") for i in range(5)]
    peer = BatchPeer(lambda *a: answer(*a))
    answer = in_order(peer)
    async with peer, beside(origin, tmp_path, peer) as edge:
        before = batches()
        assert answers(await exchange(edge.port, request(warm, close=True)), ["GET"])[0][0] == 200
        raws = await viewers(edge.port, paths)
        for p, raw in zip(paths, raws, strict=True):
            assert answers(raw, ["GET"])[0][::2] == (200, p.encode() * 3), p
        assert [sorted(s) for s in peer.seen] == [sorted([warm, *paths])]  # one connection: 1, then 4
        after = batches()
        assert {k: after[k] - before[k] for k in after} == {
            "count": 2,
            "sum": 5,
            "1.0": 1,
            "2.0": 1,
            "3.0": 1,
            "4.0": 2,
            "6.0": 2,
            "8.0": 2,
            "+Inf": 2,
        }
