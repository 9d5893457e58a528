"""Answers the node closes after while the client may still be sending reach it: the connection lingers (proxy.linger),
its write side shut and what comes read and dropped for a bounded time, instead of a close with input unread,
which makes the kernel reset the connection and the client lose the answer (ECONNRESET)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import trustme

from edgecache.config import Config, Listen
from edgecache.proxy import linger
from edgecache.proxy.fastpath import FastPath
from edgecache.proxy.fastserver import FastServer
from edgecache.server import connection_cap, make_fast, make_server, open_node
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_tls import issue
from tests.origin import Origin
from tests.wire import own_error

FULL = "too many connections: try again soon"
GET_A = b"GET /a HTTP/1.1\r\nHost: video.test\r\n\r\n"


async def sent_before_accept(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose first bytes are in the node's socket before the node accepts it: connected (loopback's
    handshake ends within the call) and sent without the loop turning, as a client on another host would be."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    sock.send(data)
    return await asyncio.open_connection(sock=sock)


async def answer(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        return await reader.read(-1)


async def held(edge: Edge, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: video.test\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
        writers.append(writer)
    return writers


async def until(holds: Callable[[], bool], seconds: float = 10) -> None:
    async with asyncio.timeout(seconds):
        while not holds():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def shut(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
        with contextlib.suppress(ConnectionError):
            await w.wait_closed()


def full_config(origin: Origin, tmp_path: Path) -> Config:
    origin.put("/a", b"a")
    return replace(make_config(tmp_path / "c", [origin.url]), max_connections=2)


async def test_a_full_nodes_503_reaches_a_client_whose_request_came_with_its_connection(
    origin: Origin, tmp_path: Path
) -> None:
    """Past max_connections a client that sent its request at once got a reset instead of the 503: the node wrote
    the 503 and closed the socket with the request unread in it."""
    async with start_edge(full_config(origin, tmp_path)) as edge:
        writers = await held(edge, 2)
        for _ in range(5):
            reader, writer = await sent_before_accept(edge.port, GET_A)
            full = await answer(reader)
            assert full == own_error(full, 503, FULL)
            await shut([writer])
        await shut(writers)
    assert origin.hits["/a"] == 1  # the held ones' one fill; none for the refused


async def test_the_503s_lingering_are_few_and_the_rest_close_at_once(origin: Origin, tmp_path: Path) -> None:
    """A 503's connection is past max_connections already: at most `limit` of them linger; one more is closed at
    once (its unread request resets it), and a place is free again once a client closes its side."""
    async with start_edge(full_config(origin, tmp_path)) as edge:
        assert edge.fast is not None
        pool = edge.fast.full
        pool.limit, pool.seconds = 2, 60.0
        writers = await held(edge, 2)
        lingering = []
        for _ in range(2):
            reader, writer = await sent_before_accept(edge.port, GET_A)
            full = await answer(reader)
            assert full == own_error(full, 503, FULL)  # and its end: the node shut its side
            lingering.append(writer)  # not closed: the node reads what it sends for `seconds`
        assert len(pool.lingering) == 2
        reader, writer = await sent_before_accept(edge.port, GET_A)
        with pytest.raises(ConnectionResetError):
            await answer(reader)
        await shut([writer, lingering.pop()])
        await until(lambda: len(pool.lingering) == 1)  # its end came: closed
        reader, writer = await sent_before_accept(edge.port, GET_A)
        full = await answer(reader)
        assert full == own_error(full, 503, FULL)
        await shut([writer, *writers, *lingering])


async def test_a_503s_connection_lingers_no_longer_than_its_seconds(origin: Origin, tmp_path: Path) -> None:
    """A client that never closes its side holds the 503's lingering connection only `seconds`."""
    async with start_edge(full_config(origin, tmp_path)) as edge:
        assert edge.fast is not None
        pool = edge.fast.full
        pool.seconds = 0.2
        writers = await held(edge, 2)
        reader, writer = await sent_before_accept(edge.port, GET_A)
        full = await answer(reader)
        assert full == own_error(full, 503, FULL)
        assert len(pool.lingering) == 1
        await until(lambda: not pool.lingering, seconds=5)  # closed, though its client still has it open
        await shut([writer, *writers])


# What a client pipelines behind a request the node closes after: more than one read of the node's takes (256 KiB).
MORE = b"GET /later HTTP/1.1\r\nHost: video.test\r\n\r\n" * 20_000
CLOSE = "Connection: close\r\n"


async def sent_with_more(port: int, first: bytes) -> bytes:
    """What the node answers a connection that sends `first` and MORE at once, read to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first + MORE)
        return await answer(reader)
    finally:
        await shut([writer])


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (f"GET /a HTTP/1.1\r\nHost: video.test\r\n{CLOSE}\r\n", b"HTTP/1.1 200 OK\r\n"),  # a hit
        (f"GET /cold HTTP/1.1\r\nHost: video.test\r\n{CLOSE}\r\n", b"HTTP/1.1 200 OK\r\n"),  # a miss
        (f"GET /a HTTP/1.1\r\nHost: video.test\r\nCache-Control: no-store\r\n{CLOSE}\r\n", b"HTTP/1.1 200 OK\r\n"),
        (f"GET /p HTTP/1.1\r\nHost: video.test\r\n{CLOSE}\r\n", b"HTTP/1.1 200 OK\r\n"),  # private: uncached
        (
            f"GET /none HTTP/1.1\r\nHost: video.test\r\nCache-Control: only-if-cached\r\n{CLOSE}\r\n",
            b"HTTP/1.1 504 Gateway Timeout\r\n",  # a refusal
        ),
    ],
    ids=["hit", "miss", "pass", "private", "refused"],
)
async def test_an_answer_before_a_close_reaches_a_client_still_sending(
    origin: Origin, tmp_path: Path, first: str, expected: bytes
) -> None:
    """A client that pipelined more behind a request the node closes after (Connection: close, a refusal) got a
    reset, not the answer: the node closed with that input unread, and the kernel reset the connection."""
    origin.put("/a", b"a")
    origin.put("/cold", b"cold")
    origin.put("/p", b"private", headers={"Cache-Control": "private"})
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge:
        assert edge.fast is not None
        assert (await edge.get("/a"))[0] == 200
        for _ in range(2):
            got = await sent_with_more(edge.port, first.encode())
            assert got.startswith(expected)
            assert got.count(b"HTTP/1.1 ") == 1  # nothing pipelined after it is answered
    assert origin.hits.get("/later", 0) == 0


async def test_a_proxy_listeners_400_reaches_a_client_still_sending(origin: Origin, tmp_path: Path) -> None:
    """HTTP sent to a PROXY protocol listener gets 400 (fastpath._refuse): with more of it unread, a reset instead."""
    config = make_config(tmp_path / "c", [origin.url])
    async with start_edge(replace(config, proxy_protocol=config.listen)) as edge:
        for _ in range(2):
            got = await sent_with_more(edge.port, b"")
            assert got == own_error(got, 400, "expected a PROXY protocol header")
    assert origin.hits == {}


async def test_the_https_ports_400_to_plain_http_reaches_a_client_still_sending(origin: Origin, tmp_path: Path) -> None:
    """Plain HTTP on the HTTPS port gets 400 (tlsdoor): the node read 16 KiB of it, and a client that sent more got a
    reset instead."""
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(trustme.CA(), tmp_path, "videos", "video.test"))
    async with start_edge(replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),))) as edge:
        for _ in range(2):
            got = await sent_with_more(edge.ports[1], b"")
            assert got == own_error(got, 400, "the plain HTTP request was sent to HTTPS port")
    assert origin.hits == {}


async def test_a_forwarded_answer_before_a_close_reaches_a_client_still_sending(origin: Origin, tmp_path: Path) -> None:
    """A request another node owns, relayed with Connection: close (proxy.relay), was closed with what the client
    pipelined behind it unread: a reset instead of the owner's answer, as the node's own answers were."""
    configs = cluster_configs(origin, tmp_path)
    path = next(p for p in (f"/f{i}" for i in range(100)) if owner_of(configs, p) == "node2")
    origin.put(path, b"owned elsewhere")
    async with started(configs) as nodes:
        first = f"GET {path} HTTP/1.1\r\nHost: video.test\r\n{CLOSE}\r\n".encode()
        for _ in range(2):
            got = await sent_with_more(nodes[0].port, first)
            assert got.startswith(b"HTTP/1.1 200 OK\r\n")
            assert got.endswith(b"\r\n\r\nowned elsewhere")
            assert got.count(b"HTTP/1.1 ") == 1
    assert origin.hits == {path: 1}


def theirs(fast: FastServer, client: tuple[str, int]) -> list[FastPath]:
    """The node's connections of the client at `client` (its socket's address)."""
    return [c for c in fast.connections if c.transport and c.transport.get_extra_info("peername") == client]


async def test_a_lingering_answer_its_client_stopped_taking_is_let_go(origin: Origin, tmp_path: Path) -> None:
    """A client that took a Connection: close answer until less than the transport's low mark was left, then took
    no more, held its lingering connection for ever: the transport had resumed (no pause, so no write timer) and
    the time was counted again and again while bytes were left. It is let go after client_write_timeout."""
    body = bytes(range(256)) * 8192  # 2 MiB
    origin.put("/big", body)
    config = replace(make_config(tmp_path / "c", [origin.url]), client_write_timeout=1.0)
    async with start_edge(config) as edge:
        fast = edge.fast
        assert fast is not None
        for _ in range(2):  # the answer below is a hit, written to the transport at once
            assert (await edge.get("/big"))[2] == body
        pool = fast.lingering
        pool.seconds = 0.2
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", edge.port))
            here = sock.getsockname()
            await until(lambda: len(theirs(fast, here)) == 1)
            (conn,) = theirs(fast, here)
            assert conn.transport is not None
            # The node's socket takes few bytes at a time, so the buffer's last takes can stop short of its end.
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(sock, f"GET /big HTTP/1.1\r\nHost: video.test\r\n{CLOSE}\r\n".encode())
            await until(lambda: len(pool.lingering) == 1)
            (lingering,) = pool.lingering
            low = lingering.transport.get_write_buffer_limits()[0]
            while not 0 < lingering.transport.get_write_buffer_size() < low:
                assert await loop.sock_recv(sock, 1024)
            await until(lambda: not pool.lingering, seconds=5)  # took nothing more for client_write_timeout
    assert origin.hits == {"/big": 1}


async def test_the_lingering_sizes_are_made_with_the_fast_paths_settings(origin: Origin, tmp_path: Path) -> None:
    """The lingering pools' sizes, lowered with max_connections when the descriptors are few (server.connection_cap),
    were set on FastSettings after it was built: settings that could change after the pools were sized from them.
    They are made in one call now, frozen, and the pools have them."""
    config = replace(make_config(tmp_path / "c", [origin.url]), header_timeout=7.0, idle_timeout=9.0, fast_path=False)
    async with open_node(config) as node:
        server = make_server(node)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Descriptors for about 1,700 more: max_connections and both pools lowered (here, not in the node's own files).
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 1700, hard))
        try:
            cap = connection_cap(config)
            fast = make_fast(node, server)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    s = fast.settings
    assert (s.header_timeout, s.idle_timeout, s.answers, s.memo_bytes) == (7.0, 9.0, False, config.cache.memo_bytes)
    assert (s.max_connections, s.lingering, s.full_lingering) == cap
    assert cap[0] < config.max_connections
    assert cap[1] < 512
    assert (fast.lingering.limit, fast.full.limit) == (s.lingering, s.full_lingering)
    with pytest.raises(FrozenInstanceError):
        s.lingering = 512  # type: ignore[misc]
    assert origin.hits == {}


async def test_a_connection_its_client_reset_before_the_close_is_let_go_without_an_error() -> None:
    """The client reset the connection before the node closed it after its answer: asyncio's loop raises ENOTCONN
    from write_eof, which reached the closing fast path as an exception, and the lingering protocol, already the
    transport's, had no timer for its connection_lost (AttributeError)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
    transport.pause_reading()  # the reset is not read before the close, as when the close comes in the same turn
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # a reset
    pool = linger.Pool(8, 2.0, 5.0)
    assert pool.close(transport)
    lingering = transport.get_protocol()
    closed: asyncio.Future[None] = loop.create_future()
    lost = lingering.connection_lost
    lingering.connection_lost = lambda exc: (lost(exc), closed.set_result(None))  # type: ignore[method-assign]
    async with asyncio.timeout(10):
        await closed
    assert (transport.is_closing(), pool.lingering, errors) == (True, set(), [])
