"""Forwards on the fast path (proxy.relay, proxy.peerpool): a request another node owns is relayed to it without
aiohttp, over pooled keep-alive connections, and its answer reaches the viewer byte for byte as it arrives.

A real 2-node cluster for the ordinary answers, and a real node whose peer is a socket this test scripts, for the
odd but legal ones (204, 304, 1xx, chunked with trailers, a body ending at close, an empty body), a viewer that
stops reading or leaves, a peer whose head never ends, and the bound on connections to one peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from edgecache.config import ClusterSettings, Config, Listen
from edgecache.core.ring import Member, Ring
from edgecache.proxy import peerpool
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge
from tests.e2e import test_hops as hops
from tests.e2e.procs import free_port
from tests.e2e.test_cluster import STALL, cluster_configs, owner_of, started
from tests.e2e.test_peer_metrics import deltas, peer_errors
from tests.origin import Origin
from tests.samples import sample_value

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def fast_path(outcome: str) -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": outcome}) or 0.0


async def exchange(port: int, data: bytes, read: int = -1) -> bytes:
    """Raw bytes in; the answer read to the close (or `read` bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            return await (reader.read(-1) if read < 0 else reader.readexactly(read))
    finally:
        writer.close()


def request(path: str, *fields: str, method: str = "GET", close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: video.test", *fields, *(["Connection: close"] if close else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answers(raw: bytes, methods: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Split pipelined answers (Content-Length or chunked framing; HEAD has no body)."""
    out = []
    for method in methods:
        top, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *lines = top.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        status = int(status_line.split()[1])
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif fields.get("transfer-encoding") == "chunked":
            while True:
                size_line, _, raw = raw.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    raw = raw[2:]
                    break
                body, raw = body + raw[:size], raw[size + 2 :]
        else:
            n = int(fields["content-length"])
            body, raw = raw[:n], raw[n:]
        out.append((status, fields, body))
    assert raw == b"", raw[:200]
    return out


async def test_forwarded_gets_and_heads_are_relayed_on_the_fast_path_twice_on_one_connection(
    origin: Origin, tmp_path: Path
) -> None:
    configs = cluster_configs(origin, tmp_path)
    path = next(p for p in (f"/r/{i}.bin" for i in range(100)) if owner_of(configs, p) == "node2")
    data = bytes(range(250)) * 8000  # 2,000,000 bytes: a slice boundary inside
    origin.put(path, data)
    async with started(configs) as nodes:
        assert (await nodes[1].get(path))[2] == data  # the owner fills it (a miss: aiohttp's, for now)
        handed, forwarded = fast_path("handed_off"), fast_path("forwarded")
        shapes = [
            (request(path), "GET"),
            (request(path, method="HEAD"), "HEAD"),
            (request(path, "Range: bytes=1048000-1048575"), "GET"),
            (request(path, "Range: bytes=-10"), "GET"),
        ]
        pipelined = b"".join(r for r, _ in shapes * 2) + request(path, method="HEAD", close=True)
        got = answers(await exchange(nodes[0].port, pipelined), [m for _, m in shapes * 2] + ["HEAD"])
        for _, fields, _ in got:
            assert fields["cache-status"] == 'edgecache; hit, edgecache; fwd=miss; detail="peer"'
            assert fields["via"] == "1.1 edgecache, 1.1 edgecache"
        assert [(s, f.get("content-range"), b) for s, f, b in got[:4]] == [
            (200, None, data),
            (200, None, b""),
            (206, "bytes 1048000-1048575/2000000", data[1048000:1048576]),
            (206, "bytes 1999990-1999999/2000000", data[-10:]),
        ]
        # The same answers again, but for the clock's fields (a second may end between them: Age 0, then 1).
        clockless = [(s, {k: v for k, v in f.items() if k not in ("age", "date")}, b) for s, f, b in got]
        assert clockless[:4] == clockless[4:8]
        assert all(f["age"] in ("0", "1") for _, f, _ in got)
        assert got[1][1]["content-length"] == str(len(data))  # a HEAD says the length it would have sent
        assert got[8][1]["connection"] == "close"
        assert origin.hits[path] == 1
        assert nodes[0].node.store.peek_meta(f"videos|video.test|{path}") is None  # never stored by the forwarder
        assert fast_path("handed_off") == handed
        assert fast_path("forwarded") - forwarded == 9


class ScriptedPeer:
    """node2 of a cluster, a socket this test scripts: each request's path names the answer written."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.server: asyncio.Server | None = None
        self.port = 0
        self.seen: list[str] = []
        self.heads: list[bytes] = []
        self.connections = 0  # that carried a request (health checks connect and close)
        self.closed = 0  # of those, closed (by either side)
        self.changed = asyncio.Condition()
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedPeer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()
        # Python 3.11's wait_closed() does not wait for the connections: each closes in its own handler.
        async with asyncio.timeout(10):  # a script a failed test left waiting is cancelled by then
            await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        counted = False
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if not counted:
                        self.connections, counted = self.connections + 1, True
                    path = head.split(b" ", 2)[1].decode()
                    self.seen.append(path)
                    self.heads.append(head)
                    await self.scripts[path.split("?")[0]](reader, writer)
                    await writer.drain()
        finally:
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.handlers.discard(task)
            if counted:
                self.closed += 1
                async with self.changed:
                    self.changed.notify_all()


def owned_by(ring: Ring, member: str, name: str) -> str:
    """A path beginning with `name` whose owner is `member`, with `name` as its script's key."""
    names = (f"{name}{i}" for i in range(1000))
    return next(p for p in names if (m := ring.owner(f"videos|video.test|{p}")) is not None and m.id == member)


@contextlib.asynccontextmanager
async def beside(origin: Origin, tmp_path: Path, peer: ScriptedPeer, **origin_settings: float) -> AsyncIterator[Edge]:
    port = free_port()
    members = (Member("node1", f"127.0.0.1:{port}"), Member("node2", f"127.0.0.1:{peer.port}"))
    base = make_config(tmp_path / "node1", [origin.url])
    # Health checks an hour apart: a forward that finds node2 broken takes it down, and no check brings it back up
    # (rise) while the test looks; at 0.1 s, two checks on a loaded machine could, and a GET went to node2 again.
    cluster = ClusterSettings("node1", key=CLUSTER_KEY, nodes=members, interval=3600, timeout=STALL, fall=1_000_000)
    config: Config = replace(
        base, listen=(Listen("127.0.0.1", port),), cluster=cluster, origin=replace(base.origin, **origin_settings)
    )
    async with start_edge(config) as edge:
        yield edge


RING = Ring.of((Member("node1", "127.0.0.1:1"), Member("node2", "127.0.0.1:2")))  # owners depend on ids only


def scripted(names: dict[str, bytes]) -> tuple[dict[str, Script], dict[str, str]]:
    """Scripts writing fixed bytes, under paths node2 owns; and each name's path."""
    paths = {name: owned_by(RING, "node2", f"/{name}/") for name in names}

    def writes(raw: bytes) -> Script:
        async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(raw)
            if b"Connection: close" in raw:
                writer.close()

        return script

    return {paths[n]: writes(raw) for n, raw in names.items()}, paths


ODD = {
    "nocontent": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
    "notmodified": b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\nContent-Length: 5\r\n\r\n',
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nTrailer: X-T\r\n\r\n"
    b"4\r\nwxyz\r\n0\r\nX-T: 1\r\n\r\n",
    "empty": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "reason": b"HTTP/1.1 299 Whatever You Like\r\nContent-Length: 2\r\nX-L: caf\xe9\r\n\r\nok",
}


async def test_odd_but_legal_answers_are_relayed_exactly_twice_on_one_connection(
    origin: Origin, tmp_path: Path
) -> None:
    scripts, paths = scripted(ODD)
    names = list(ODD)
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        handed = fast_path("handed_off")
        pipelined = b"".join(request(paths[n]) for n in names * 2)
        raw = await exchange(edge.port, pipelined + request(paths["empty"], close=True))
        got = answers(raw, ["GET"] * (2 * len(names) + 1))
        expected = {
            "nocontent": (204, b""),
            "notmodified": (304, b""),
            "interim": (200, b"abc"),
            "chunked": (200, b"wxyz"),
            "empty": (200, b""),
            "reason": (299, b"ok"),
        }
        assert [(s, b) for s, _, b in got] == [expected[n] for n in names * 2] + [(200, b"")]
        by_name = dict(zip(names, got, strict=False))
        assert "content-length" not in by_name["nocontent"][1]
        assert "content-length" not in by_name["notmodified"][1]  # as aiohttp's server writes a 304
        assert by_name["notmodified"][1]["etag"] == '"e"'
        assert by_name["chunked"][1]["transfer-encoding"] == "chunked"  # a body of unknown length stays chunked
        assert "x-t" not in by_name["chunked"][1]  # trailers are not passed on (nor by the full handler)
        assert by_name["interim"][1]["content-type"] == "text/plain"
        assert b"HTTP/1.1 299 Whatever You Like\r\n" in raw  # byte for byte
        assert b"X-L: caf\xe9\r\n" in raw
        assert by_name["empty"][1]["content-length"] == "0"
        assert peer.connections == 1  # every answer kept its connection to the peer
        assert fast_path("handed_off") == handed


async def test_a_viewers_field_past_ascii_reaches_the_owner_as_it_was_sent(origin: Origin, tmp_path: Path) -> None:
    """A User-Agent of UTF-8 and of bytes no charset names (obs-text), forwarded twice on the fast path: the owner
    gets the viewer's bytes, not a re-encoding of them (nor an error)."""
    scripts, paths = scripted({"ua": ODD["empty"]})
    ua = b"caf\xc3\xa9 \xff\xfe/1"
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        handed = fast_path("handed_off")
        field = b"Host: video.test\r\nUser-Agent: " + ua
        asked = [request(paths["ua"], close=close).replace(b"Host: video.test", field) for close in (False, True)]
        raw = await exchange(edge.port, b"".join(asked))
        assert [s for s, _, _ in answers(raw, ["GET", "GET"])] == [200, 200]
        assert fast_path("handed_off") == handed
    assert len(peer.heads) == 2
    assert all(b"\r\nUser-Agent: " + ua + b"\r\n" in head for head in peer.heads)


async def test_a_body_that_ends_at_close_is_relayed_chunked_and_whole(origin: Origin, tmp_path: Path) -> None:
    scripts, paths = scripted({"toclose": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 100_000})
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        for _ in range(2):
            raw = await exchange(edge.port, request(paths["toclose"]) + request(paths["toclose"], close=True))
            first, second = answers(raw, ["GET", "GET"])
            assert first[::2] == second[::2]
            assert (first[0], first[1]["transfer-encoding"], first[2]) == (200, "chunked", b"z" * 100_000)
        assert peer.connections == 4  # the peer closed each one


async def test_a_viewer_that_stops_reading_stops_the_relay_reading_its_peer(origin: Origin, tmp_path: Path) -> None:
    size = 64 * 2**20
    # Made in a thread, and read below in pieces: on the loop, building it (300 ms of fresh pages) or joining what
    # was read (up to 308 ms under load) was a stall of the test's own, once past the stall guard's 500 ms.
    data = await asyncio.to_thread(os.urandom, size)
    held: list[asyncio.StreamWriter] = []
    asked = asyncio.Event()

    async def huge(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        asked.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        # Never drained, in pieces: one 64 MiB write copies it all in one callback (a 519 ms stall of the loop).
        for at in range(0, size, 2**22):
            writer.write(memoryview(data)[at : at + 2**22])
            await asyncio.sleep(0)

    paths = {"huge": owned_by(RING, "node2", "/huge/")}
    async with ScriptedPeer({paths["huge"]: huge}) as peer, beside(origin, tmp_path, peer) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(request(paths["huge"], close=True))
            async with asyncio.timeout(20):
                await asked.wait()
                # The peer's unsent bytes stop shrinking once the relay stops reading: the viewer holds TCP's
                # buffers and the node at most its transport's high-water mark, not the other ~60 MiB.
                before = -1
                while (left := held[0].transport.get_write_buffer_size()) != before:
                    before = left
                    await asyncio.sleep(0.2)
            assert left > size - 16 * 2**20, left
            body = bytearray()
            async with asyncio.timeout(20):
                top = await reader.readuntil(b"\r\n\r\n")
                while piece := await reader.read(2**20):
                    body += piece
            assert top.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == data
        finally:
            writer.close()


async def test_a_viewer_that_never_reads_leaves_its_place_in_the_peer_pool_to_others(
    origin: Origin, tmp_path: Path
) -> None:
    """A relay paused for a viewer that stopped reading gives up its place under origin.max_connections: with
    every place held so, each other forward to that peer waited out the connect timeout and got 504."""
    size = 64 * 2**20
    asked = asyncio.Event()

    async def huge(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(0, size, 2**22):
            writer.write(bytes(2**22))
            await asyncio.sleep(0)

    scripts, paths = scripted({"small": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"})
    paths["huge"] = owned_by(RING, "node2", "/huge/")
    scripts[paths["huge"]] = huge
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer, max_connections=1) as edge:
        _, stalled = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            stalled.write(request(paths["huge"]))  # and never a byte read
            async with asyncio.timeout(20):
                await asked.wait()
            for _ in range(2):
                raw = await exchange(edge.port, request(paths["small"], close=True))
                assert answers(raw, ["GET"])[0][::2] == (200, b"ok")
            assert peer.connections == 2  # the stalled viewer's, and one beside it, kept for the second
        finally:
            stalled.close()


async def test_a_viewer_gone_mid_answer_costs_that_peer_connection_only(origin: Origin, tmp_path: Path) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await writer.drain()
        assert await reader.read() == b""  # the rest never comes: only the edge's close ends this

    scripts, paths = scripted({"fine": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"})
    paths["slow"] = owned_by(RING, "node2", "/slow/")
    scripts[paths["slow"]] = slow
    # A read timeout past the test's wait: only the viewer's leaving can end that peer connection in time.
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer, read_timeout=60) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(request(paths["slow"]))
        async with asyncio.timeout(10):
            await reader.readuntil(b"12345")
        # The viewer leaves mid-answer (a reset: a FIN alone is a half-close, whose answer is still owed to it):
        # the edge drops its peer connection with it.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        async with peer.changed, asyncio.timeout(10):
            await peer.changed.wait_for(lambda: peer.closed == 1)
        for _ in range(2):
            raw = await exchange(edge.port, request(paths["fine"], close=True))
            assert answers(raw, ["GET"])[0][::2] == (200, b"ok")
        assert peer.connections == 2  # the half-read one was not reused


async def test_a_peer_head_over_the_bound_is_a_broken_peer_and_the_next_owner_answers(
    origin: Origin, tmp_path: Path
) -> None:
    endless = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * (2 * peerpool.MAX_HEAD)  # no end in sight
    scripts, paths = scripted({"long": endless})
    origin.put(paths["long"], b"from origin")
    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        errors = peer_errors("node2")
        for _ in range(2):
            raw = await exchange(edge.port, request(paths["long"], close=True))
            assert answers(raw, ["GET"])[0][::2] == (200, b"from origin")
        assert not edge.node.cluster.is_up("node2")  # type: ignore[union-attr]
        assert deltas(errors, peer_errors("node2")) == {"malformed": 1}  # the second found it down: not asked
        assert (peer.connections, origin.hits[paths["long"]]) == (1, 1)


@pytest.mark.parametrize("limit", [1, 3])
async def test_connections_to_one_peer_are_bounded_and_waiters_served_in_turn(
    origin: Origin, tmp_path: Path, limit: int
) -> None:
    gate = asyncio.Event()
    arrived = asyncio.Condition()

    async def held(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with arrived:
            arrived.notify_all()
        await gate.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld")

    paths = {"held": owned_by(RING, "node2", "/held/")}
    async with (
        ScriptedPeer({paths["held"]: held}) as peer,
        beside(origin, tmp_path, peer, max_connections=limit) as edge,
    ):
        viewers = [asyncio.create_task(exchange(edge.port, request(paths["held"], close=True))) for _ in range(6)]
        async with arrived, asyncio.timeout(10):
            await arrived.wait_for(lambda: len(peer.seen) >= limit)
        await asyncio.sleep(0)
        assert peer.connections == limit
        gate.set()
        async with asyncio.timeout(20):
            raws = await asyncio.gather(*viewers)
        assert [answers(r, ["GET"])[0][::2] for r in raws] == [(200, b"held")] * 6
        assert (peer.connections, len(peer.seen)) == (limit, 6)


async def test_a_peers_head_is_remembered_without_its_hop_and_each_hop_is_checked(tmp_path: Path) -> None:
    """The owner remembers a peer's answer by the head without its hop field (which changes on every request),
    and checks each new hop against it: a valid one names its viewer, a forged or stale one makes the request a
    client's (this site allows only 127.0.0.2, so the connecting address 127.0.0.1 is refused)."""
    allow = {"allow": (ip_network("127.0.0.2/32"),)}
    async with hops.origins() as origs, hops.cluster(origs, tmp_path, allow) as nodes:
        for o in origs:
            o.put("/m", hops.BODY)
        owner = nodes[hops.owner_index("/m")]
        base = request("/m").replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 127.0.0.2\r\n\r\n")
        heads = [
            base.replace(b"\r\n\r\n", f"\r\nEdgecache-Hop: {field}\r\n\r\n".encode(), 1)
            for field in (
                hops.hop("/m", viewer="127.0.0.2"),  # a miss: filled, then remembered from the next one
                hops.hop("/m", viewer="127.0.0.2"),
                hops.hop("/m", viewer="127.0.0.9"),  # the same head but for the hop: the new viewer is logged
                hops.hop("/m", viewer="127.0.0.2", key=b"k" * 40),  # forged
                hops.hop("/m", viewer="127.0.0.2", at=time.time() - 100),  # stale
                hops.hop("/m", viewer="127.0.0.9"),
            )
        ]
        for head in heads:  # each on a connection of its own, as the memo is the worker's, not the connection's
            raw = await exchange(owner.port, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            assert raw.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 403 Forbidden\r\n")), raw[:100]
        assert [o.hits["/m"] for o in origs] == [1 if n is owner else 0 for n in nodes]
    served = [(c, s, cache) for c, _, s, cache in hops.log(tmp_path, hops.owner_index("/m"))]
    assert served == [
        ("127.0.0.2", 200, "miss"),
        ("127.0.0.2", 200, "hit"),
        ("127.0.0.9", 200, "hit"),
        ("127.0.0.1", 403, "error"),
        ("127.0.0.1", 403, "error"),
        ("127.0.0.9", 200, "hit"),
    ]


async def test_an_http10_viewer_gets_its_framing_from_a_relay_twice(origin: Origin, tmp_path: Path) -> None:
    """A relayed answer to an HTTP/1.0 viewer (core.keepalive): one of known length keeps the connection, saying
    so; a chunked one is sent as it comes and ends with the close, and what the viewer sent after it is not read."""
    scripts, paths = scripted(
        {
            "length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc",
            "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            b"4\r\nwxyz\r\n3\r\n!!!\r\n0\r\n\r\n",
        }
    )

    def asked(name: str) -> bytes:
        return request(paths[name], "Connection: keep-alive").replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)

    async with ScriptedPeer(scripts) as peer, beside(origin, tmp_path, peer) as edge:
        handed = fast_path("handed_off")
        for _ in range(2):
            raw = await exchange(edge.port, asked("length") + asked("chunked") + asked("length"))
            first, _, rest = raw.partition(b"\r\n\r\nabc")
            assert first.startswith(b"HTTP/1.0 200 OK\r\n")
            assert first.endswith(b"\r\nConnection: keep-alive")
            head, _, body = rest.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 OK\r\n")
            assert b"\r\nTransfer-Encoding:" not in head
            assert b"\r\nConnection:" not in head
            assert body == b"wxyz!!!"  # and the third request was never answered
        assert fast_path("handed_off") == handed
        assert peer.connections == 1
