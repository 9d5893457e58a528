"""A client that never reads: bounded time, its connection cut, and everyone else served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import make_config, start_edge
from tests.e2e.test_linger import theirs, until
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes, own_error


def slow_clients() -> float:
    return sample_value("edgecache_slow_client_disconnects_total") or 0.0


async def test_client_that_never_reads_is_cut_and_others_are_served(
    origin: Origin, tmp_path: Path, big_bytes: bytes
) -> None:
    origin.put("/big", big_bytes)
    cfg = replace(make_config(tmp_path / "c", [origin.url]), client_write_timeout=0.5)
    async with start_edge(cfg) as edge:
        before = slow_clients()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: video.test\r\n\r\n")
        await writer.drain()
        # Meanwhile another client gets the whole object, from the same fill.
        status, _, body = await edge.get("/big")
        assert status == 200
        # Hashed off the loop: 2 x 64 MiB of sha256 took 94 ms on it.
        same = await asyncio.to_thread(lambda: hashlib.sha256(body).digest() == hashlib.sha256(big_bytes).digest())
        assert same
        # The reader that never read: the edge cuts it once its socket stays full past the write timeout. Wait
        # for the cut before reading at all (the cut is the edge's own decision: its counter is the only sign).
        async with asyncio.timeout(30):
            while slow_clients() == before:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        received = 0
        async with asyncio.timeout(30):
            try:
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert received < len(big_bytes)  # cut short, not completed
        assert origin.hits["/big"] == 1


async def test_overload_answers_503_with_retry_after(origin: Origin, tmp_path: Path) -> None:
    origin.put("/held", b"h")
    origin.gate = asyncio.Event()
    cfg = replace(make_config(tmp_path / "c", [origin.url]), max_requests=2)
    async with start_edge(cfg) as edge:
        held = [asyncio.ensure_future(edge.get(f"/held?n={i}")) for i in range(2)]
        await origin.wait_for_requests(2)  # both in flight, held at the origin
        status, headers, body = await edge.get("/held?n=3")
        assert (status, headers["Retry-After"], body) == (503, "1", b"overloaded: try again shortly\n")
        origin.gate.set()
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
        assert (await edge.get("/held?n=4"))[0] == 200  # capacity is back
        assert origin.hits["/held?n=3"] == 0


def shed() -> float:
    return sample_value("edgecache_shed_requests_total") or 0.0


async def overloaded(origin: Origin, tmp_path: Path, fast: bool) -> tuple[bytes, list[str], float, float]:
    """Two misses held at the origin on a node that takes two at once; then a hit, a miss and a HEAD pipelined on
    one connection. What that connection got (Date masked), the log lines, and the hand-offs meanwhile."""
    log = tmp_path / f"{fast}.log"
    cfg = replace(make_config(tmp_path / str(fast), [origin.url]), max_requests=2, fast_path=fast, access_log=log)
    origin.gate = None
    origin.seen.clear()
    async with start_edge(cfg) as edge:
        assert (await edge.get("/hit"))[0] == 200
        origin.gate = asyncio.Event()
        held = [asyncio.ensure_future(edge.get(f"/held?n={i}")) for i in range(2)]
        await origin.wait_for_requests(3)  # both in flight, held at the origin
        before, shed_before = fast_path_outcomes()["handed_off"], shed()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        asked = [
            f"{m} {p} HTTP/1.1\r\nHost: video.test\r\n" for m, p in (("GET", "/hit"), ("GET", "/x"), ("HEAD", "/x"))
        ]
        writer.write(("\r\n".join(asked) + "Connection: close\r\n\r\n").encode())
        async with asyncio.timeout(10):
            got = await reader.read(-1)
        writer.close()
        handed_off, shed_now = fast_path_outcomes()["handed_off"] - before, shed() - shed_before
        origin.gate.set()
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    logged = [f"{x['method']} {x['host']} {x['path']} {x['status']} {x['cache']} {x['bytes']}" for x in lines]
    return re.sub(rb"\r\nDate: [^\r]*", b"", got), logged, handed_off, shed_now


async def test_overload_is_shed_on_the_fast_path_as_the_full_handler_sheds_it(origin: Origin, tmp_path: Path) -> None:
    """The 503s of an overloaded node, a hit's too, are the fast path's own (they were handed to aiohttp), with
    the full handler's bytes and log lines; and the connection is kept until the client closes it."""
    origin.put("/hit", b"cached")
    origin.put("/held", b"h")
    fast, fast_log, handed_off, fast_shed = await overloaded(origin, tmp_path, True)
    full, full_log, _, full_shed = await overloaded(origin, tmp_path, False)
    assert fast == full
    assert (fast_shed, full_shed) == (3, 3)  # edgecache_shed_requests_total, once each
    assert sorted(fast_log) == sorted(full_log)  # the held two end in either order
    assert handed_off == 0
    answer = b"HTTP/1.1 503 Service Unavailable\r\n"
    assert fast.count(answer) == 3
    assert fast.endswith(b"\r\nConnection: close\r\n\r\n")  # the HEAD's: a head alone
    assert [x for x in fast_log if "held" not in x] == [
        "GET video.test /hit 200 miss 6",
        "GET video.test /hit 503 error 30",
        "GET video.test /x 503 error 30",
        "HEAD video.test /x 503 error 0",
    ]
    assert origin.hits["/x"] == 0


async def test_per_client_rate_limit_answers_429(origin: Origin, tmp_path: Path) -> None:
    origin.put("/r", b"r")
    cfg = replace(make_config(tmp_path / "c", [origin.url]), rate_limit=0.001, burst=3)
    async with start_edge(cfg) as edge:
        statuses = [(await edge.get("/r"))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        status, headers, body = await edge.get("/r")
        # The next token comes in 1,000 s at 0.001 a second (less the moments the test took: rounded up).
        assert (status, headers["Retry-After"], body) == (429, "1000", b"too many requests from this address\n")


async def test_a_refusal_is_logged_with_the_keys_host_on_both_paths(origin: Origin, tmp_path: Path) -> None:
    """Requests refused once they have a key (the rate limit here: a remembered hit's, then a miss's) are logged
    with the key's host, not the Host field as the client wrote it, on the fast path as by the full handler."""
    origin.put("/r", b"r")
    logged = []
    for fast in (True, False):
        log = tmp_path / f"{fast}.log"
        cfg = replace(make_config(tmp_path / str(fast), [origin.url]), rate_limit=0.001, burst=2)
        cfg = replace(cfg, fast_path=fast, access_log=log)
        async with start_edge(cfg) as edge:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            asked = [f"GET {p} HTTP/1.1\r\nHost: Video.Test:80\r\n" for p in ("/r", "/r", "/r", "/other")]
            writer.write(("\r\n".join(asked) + "Connection: close\r\n\r\n").encode())
            async with asyncio.timeout(10):
                await reader.read(-1)
            writer.close()
        lines = [json.loads(x) for x in log.read_bytes().splitlines()]
        logged.append([(x["host"], x["path"], x["status"]) for x in lines])
    assert (
        logged[0]
        == logged[1]
        == [
            ("video.test", "/r", 200),
            ("video.test", "/r", 200),
            ("video.test", "/r", 429),
            ("video.test", "/other", 429),
        ]
    )


async def test_connections_past_the_limit_get_503_at_once(origin: Origin, tmp_path: Path) -> None:
    origin.put("/c", b"c")
    cfg = replace(make_config(tmp_path / "c", [origin.url]), max_connections=2)
    async with start_edge(cfg) as edge:
        held = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
        held[1][1].write(b"GET /c HTTP/1.1\r\nHost: video.test\r\n\r\n")  # one on aiohttp (a miss), one idle
        assert (await held[1][0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
        assert answer == own_error(answer, 503, "too many connections: try again soon")
        writer.close()
        for _, w in held:
            w.close()
            await w.wait_closed()
        # Capacity is back once they are gone (the count follows connections handed to aiohttp too).
        async with asyncio.timeout(10):
            while (await edge.get("/c"))[0] != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    assert origin.hits["/c"] == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_passes_whose_clients_stopped_reading_leave_fills_their_connections(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """A pass's answer goes to its client as the client reads it, so a client that stops reading holds its origin
    connection (until client_write_timeout). As many such clients as origin.max_connections took every connection
    fills use: each cacheable miss then waited for one and got 504, for as long as they stayed."""
    big = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB: more than loopback's socket buffers hold
    origin.put("/big", big)
    origin.put("/object", b"o" * 5000)
    config = make_config(tmp_path / "c", [origin.url])
    config = replace(config, origin=replace(config.origin, max_connections=2, connect_timeout=2.0), fast_path=fast_path)
    async with start_edge(config) as edge:
        heads = [f"GET /big?n={i} HTTP/1.1\r\nHost: video.test\r\nCache-Control: no-store\r\n\r\n" for i in range(2)]
        stalled = await _never_reading(edge.port, heads)
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(2)  # both passes hold an origin connection, their answers unread
            status, _, body = await edge.get("/object")
            assert (status, body) == (200, b"o" * 5000)
        finally:
            for writer in stalled:
                writer.close()
    assert origin.hits["/object"] == 1


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_misses_whose_private_answers_are_not_read_leave_fills_their_connections(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """A miss whose answer turns out private is fetched by a fill (its request could not be known to be a pass), and
    that fill then reads the origin as its one client reads. As many such clients as origin.max_connections, each
    asking another URL and reading nothing, took every connection fills use: every cold miss of every site waited
    for one and got 504 until client_write_timeout cut them. A fill waiting for its client counts no more (as a
    relay's connection to a peer whose viewer stopped reading: PeerPool)."""
    big = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB: more than loopback's socket buffers hold
    for i in range(2):
        origin.put(f"/private{i}", big, headers={"Cache-Control": "private"})
    origin.put("/object", b"o" * 5000)
    config = make_config(tmp_path / "c", [origin.url])
    config = replace(config, origin=replace(config.origin, max_connections=2, connect_timeout=2.0), fast_path=fast_path)
    async with start_edge(config) as edge:
        stalled = await _never_reading(
            edge.port, [f"GET /private{i} HTTP/1.1\r\nHost: video.test\r\n\r\n" for i in range(2)]
        )
        try:
            async with asyncio.timeout(10):
                await origin.wait_for_requests(2)  # both fills hold an origin connection, their answers unread
            status, _, body = await edge.get("/object")
            assert (status, body) == (200, b"o" * 5000)
        finally:
            for writer in stalled:
                writer.close()
    assert origin.hits["/object"] == 1
    assert origin.hits["/private0"] == origin.hits["/private1"] == 1


async def _never_reading(port: int, heads: list[str]) -> list[asyncio.StreamWriter]:
    """A client for each head that sends it and reads nothing, on a small receive buffer."""
    stalled = []
    for head in heads:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(head.encode())
        stalled.append(writer)
    return stalled


async def test_a_client_that_stops_reading_near_the_end_of_an_answer_is_let_go(origin: Origin, tmp_path: Path) -> None:
    """A keep-alive client that took an answer until less than the transport's low mark was left, then took no
    more, held its connection and its place under max_connections for ever: the transport had resumed (no pause,
    so no write timer), and the idle timeout's close waited for those bytes. It is cut after client_write_timeout."""
    body = bytes(range(256)) * 8192  # 2 MiB, written to the transport at once: a hit held in memory
    origin.put("/big", body)
    config = replace(make_config(tmp_path / "c", [origin.url]), client_write_timeout=1.0, idle_timeout=0.5)
    async with start_edge(config) as edge:
        fast = edge.fast
        assert fast is not None
        for _ in range(2):
            assert (await edge.get("/big"))[2] == body
        before = slow_clients()
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", edge.port))
            here = sock.getsockname()
            await until(lambda: len(theirs(fast, here)) == 1)
            (conn,) = theirs(fast, here)
            transport = conn.transport
            assert transport is not None
            # The node's socket takes few bytes at a time, so the buffer's last takes can stop short of its end.
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: video.test\r\n\r\n")
            low = transport.get_write_buffer_limits()[0]
            await until(lambda: transport.get_write_buffer_size() > low)
            while not 0 < transport.get_write_buffer_size() < low:
                assert await loop.sock_recv(sock, 1024)
            await until(lambda: not theirs(fast, here), seconds=5)  # idle, then took nothing for the write timeout
            assert fast.open == 0  # its place is free again
        assert slow_clients() == before + 1
    assert origin.hits == {"/big": 1}
