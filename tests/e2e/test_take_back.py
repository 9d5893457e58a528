"""A connection the fast path handed to aiohttp (a POST, with or without a body) comes back to
it once aiohttp has answered everything it was given: the next hit on the same keep-alive connection is the fast
path's again.

Only at a clean boundary: aiohttp waiting for a head, with no part of one in its parser, no body, no close pending.
A PROXY header's client stays the connection's client across both moves.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

from aiohttp import web

from edgecache.server import make_fast, make_server, open_node, start_listeners
from tests import wire
from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes

BODY = b"b" * 5000


def deltas(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in fast_path_outcomes().items() if v != before[k]}


def get(path: str, close: bool = False) -> bytes:
    lines = ["Connection: close"] if close else []
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: video.test", *lines]) + "\r\n\r\n").encode()


def post(path: str) -> bytes:
    """A POST whose head ends the write (no body): aiohttp's to answer (the fast path answers GET and HEAD), and
    the connection may come back after it."""
    return f"POST {path} HTTP/1.1\r\nHost: video.test\r\nContent-Length: 0\r\n\r\n".encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, _, body = await wire.read_answer(reader)
    return status, body


async def test_after_a_miss_and_a_post_the_next_hits_are_the_fast_paths_again(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", BODY)
    origin.put("/b", BODY[::-1])
    for path in ("/conditional/a", "/conditional/b"):
        origin.put(path, path.encode())
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(20):
                for path, body in (("/a", BODY), ("/b", BODY[::-1])):  # twice: each after aiohttp's answer
                    before = fast_path_outcomes()
                    writer.write(post("/conditional" + path))
                    assert await read_answer(reader) == (201, b"stored\n")  # aiohttp's answer
                    assert deltas(before) == {"handed_off": 1}
                    for _ in range(2):  # a miss, then a hit: both the fast path's
                        writer.write(get(path))
                        assert await read_answer(reader) == (200, body)
                    assert deltas(before) == {"handed_off": 1, "taken_back": 1, "answered": 2}
                before = fast_path_outcomes()
                writer.write(b"POST /form HTTP/1.1\r\nHost: video.test\r\nContent-Length: 4\r\n\r\nabcd")
                assert (await read_answer(reader))[0] == 201
                # A write that ended with a body says nothing of what aiohttp's parser holds: the next request stays
                # with aiohttp, and the one after a write that ended a head comes back.
                for _ in range(2):
                    writer.write(get("/a"))
                    assert await read_answer(reader) == (200, BODY)
                assert deltas(before) == {"handed_off": 1, "taken_back": 1, "answered": 1}
        finally:
            writer.close()
    assert (origin.hits["/a"], origin.hits["/b"], origin.hits["/form"]) == (1, 1, 1)
    assert (origin.hits["/conditional/a"], origin.hits["/conditional/b"]) == (1, 1)


async def test_a_head_split_across_the_boundary_stays_with_aiohttp(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", BODY)
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(20):
                for _ in range(2):
                    before = fast_path_outcomes()
                    # A POST aiohttp answers, then the first half of the next head in the same write: aiohttp holds
                    # that half.
                    writer.write(post("/miss-" + str(len(origin.seen))) + get("/a")[:20])
                    assert (await read_answer(reader))[0] == 201
                    writer.write(get("/a")[20:])  # its end: not a request of its own
                    assert await read_answer(reader) == (200, BODY)
                    assert deltas(before).get("taken_back", 0) == 0
                    writer.write(get("/a"))  # the boundary was clean after that one: back to the fast path
                    assert await read_answer(reader) == (200, BODY)
                    assert deltas(before)["taken_back"] == 1
        finally:
            writer.close()


async def test_a_proxy_headers_client_is_the_connections_across_the_moves(origin: Origin, tmp_path: Path) -> None:
    origin.put("/a", BODY)
    origin.put("/p", b"p")
    base = make_config(tmp_path / "cache", [origin.url])
    site = replace(base.sites[0], allow=(ip_network("203.0.113.0/24"),))
    config = replace(base, sites=(site,), proxy_protocol=base.listen, access_log=tmp_path / "access.log")
    async with start_edge(config) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(20):
                writer.write(b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 80\r\n" + post("/p"))
                assert await read_answer(reader) == (201, b"stored\n")  # aiohttp's: allowed by the declared client
                before = fast_path_outcomes()
                for _ in range(2):  # a miss, then a hit: the fast path's again, still that client's
                    writer.write(get("/a"))
                    assert await read_answer(reader) == (200, BODY)
                assert deltas(before) == {"taken_back": 1, "answered": 2}
                writer.write(get("/a", close=True))
                assert await read_answer(reader) == (200, BODY)
        finally:
            writer.close()
        declared = edge.node.shared.declared
    assert declared == {}
    lines = [json.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
    assert [(r["client"], r["path"], r["cache"]) for r in lines] == [
        ("203.0.113.9", "/p", "pass"),
        ("203.0.113.9", "/a", "miss"),
        ("203.0.113.9", "/a", "hit"),
        ("203.0.113.9", "/a", "hit"),
    ]


async def test_a_connection_handed_to_aiohttp_during_the_drain_is_closed_by_it(origin: Origin, tmp_path: Path) -> None:
    """A keep-alive client's miss that reaches the fast path after aiohttp's server stopped is handed to a
    protocol nobody will stop: the fast path's own shutdown closes it, and counts it closed once."""
    origin.put("/a", BODY)
    async with open_node(make_config(tmp_path / "cache", [origin.url])) as node:
        server = make_server(node)
        runner = web.ServerRunner(server)
        await runner.setup()
        fast = make_fast(node, server)
        sites = await start_listeners(node, runner, fast)
        port = sites[0]._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.timeout(20):
                for _ in range(2):  # a miss, then a hit: the connection is the fast path's, idle
                    writer.write(get("/a"))
                    assert await read_answer(reader) == (200, BODY)
                await runner.cleanup()  # aiohttp has stopped; the fast path drains next, as the node stops
                writer.write(get("/b"))  # not cached: handed to aiohttp, which answers it and keeps the connection
                assert (await read_answer(reader))[0] == 404
                await fast.shutdown(1.0)
                assert (fast.handed, fast.open) == (set(), 0)
                assert await reader.read() == b""  # closed, not left open for good
        finally:
            writer.close()
