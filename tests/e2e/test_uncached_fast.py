"""A miss whose answer is not stored (private, no-store, of unknown length) is streamed on the fast path from the fill
its request started (proxy.uncached), as the full handler streams it: the same heads (but Date), the same bodies,
the same log lines, the origin asked as often, and no connection handed to aiohttp. Each request is asked twice in a
row, pipelined on one connection, with HEADs between."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.e2e.test_cold_fast import until
from tests.origin import Origin, RawOrigin, RawReply, RawRequest
from tests.samples import applied
from tests.wire import fast_path_outcomes

MiB = 2**20
PRIVATE = bytes((i * 13 + i // 977) % 256 for i in range(3 * MiB + 4321))
CHUNKED = bytes((i * 5 + i // 1013) % 256 for i in range(2 * MiB + 777))


def ask(method: str, path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"{method} {path} HTTP/1.1\r\nHost: video.test\r\n{extra}\r\n".encode()


ASKED = [
    ("GET", "/private"),
    ("GET", "/private"),
    ("HEAD", "/private"),
    ("HEAD", "/private"),
    ("GET", "/chunked"),
    ("GET", "/chunked"),
    ("HEAD", "/chunked"),
    ("GET", "/small"),
    ("GET", "/small"),
]


async def chunked(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
    """The origin's answer of unknown length: chunked, in pieces of odd sizes, not to be stored."""
    if request.path != "/chunked":
        return None
    resp = web.StreamResponse(headers={"Cache-Control": "no-store", "Content-Type": "video/mp4"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method != "HEAD":
        for i in range(0, len(CHUNKED), 300_001):
            await resp.write(CHUNKED[i : i + 300_001])
    await resp.write_eof()
    return resp


def answers(raw: bytes, methods: list[str]) -> list[tuple[bytes, bytes]]:
    """Each answer's head (Date and Age masked) and body, de-chunked: chunk sizes are the origin's timing."""
    out = []
    for method in methods:
        end = raw.index(b"\r\n\r\n") + 4
        head, raw = raw[:end], raw[end:]
        body = b""
        if method != "HEAD":
            if b"\r\nTransfer-Encoding: chunked\r\n" in head:
                while True:
                    line, _, raw = raw.partition(b"\r\n")
                    size = int(line, 16)
                    body, raw = body + raw[:size], raw[size + 2 :]
                    if size == 0:
                        break
            else:
                length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head)[1])  # type: ignore[index]
                body, raw = raw[:length], raw[length:]
        out.append((re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", head), body))
    assert raw == b""
    return out


def served_from_origin() -> float:
    return applied().get_sample_value("edgecache_served_bytes_total", {"source": "origin"}) or 0.0


async def run(
    origin: Origin, tmp_path: Path, fast: bool
) -> tuple[list[tuple[bytes, bytes]], list[str], dict[str, int], float]:
    origin.hits.clear()
    served = served_from_origin()
    log = tmp_path / f"{fast}.log"
    config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast, access_log=log)
    async with start_edge(config) as edge, asyncio.timeout(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"".join(ask(m, p) for m, p in ASKED) + ask("GET", "/private", close=True))
            raw = await reader.read(-1)
        finally:
            writer.close()
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    logged = [f"{x['method']} {x['path']} {x['status']} {x['cache']} {x['bytes']} {x['upstream']}" for x in lines]
    got = answers(raw, [m for m, _ in ASKED] + ["GET"])
    return got, logged, dict(origin.hits), served_from_origin() - served


async def test_answers_not_stored_are_streamed_on_the_fast_path_as_the_full_handler_streams_them(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("/private", PRIVATE, headers={"Cache-Control": "private"})
    origin.put("/chunked", b"")
    origin.put("/small", b"tiny private answer", headers={"Cache-Control": "private, max-age=60"})
    origin.on_request = chunked
    before = fast_path_outcomes()
    fast = await run(origin, tmp_path, fast=True)
    handed_off = fast_path_outcomes()["handed_off"] - before["handed_off"]
    full = await run(origin, tmp_path, fast=False)
    assert fast == full
    assert handed_off == 0  # a HEAD of an answer of unknown length too: its head is the fill's
    got = fast[0]
    assert [body for _, body in got] == [PRIVATE, PRIVATE, b"", b"", CHUNKED, CHUNKED, b""] + [
        b"tiny private answer"
    ] * 2 + [PRIVATE]
    assert all(head.startswith(b"HTTP/1.1 200 OK\r\n") for head, _ in got)
    assert b"\r\nTransfer-Encoding: chunked\r\n" in got[4][0]
    assert b'\r\nCache-Status: edgecache; fwd=uri-miss; detail="private"\r\n' in got[0][0]
    # None stored: each asked of the origin; a HEAD of /private twice, as its fill asks for the first slice alone
    # and the full handler asks again for what the client asked (a pass-through, still aiohttp's).
    assert fast[2] == {"/private": 7, "/chunked": 3, "/small": 2}
    # Every byte sent is the origin's, in edgecache_served_bytes_total{source} too (it counted none of them).
    assert fast[3] == sum(len(body) for _, body in got)


async def test_gets_of_answers_not_stored_are_not_handed_to_aiohttp(origin: Origin, tmp_path: Path) -> None:
    origin.put("/private", PRIVATE, headers={"Cache-Control": "private"})
    origin.put("/chunked", b"")
    origin.on_request = chunked
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
    async with start_edge(config) as edge, asyncio.timeout(30):
        before = fast_path_outcomes()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for path, data in (("/private", PRIVATE), ("/chunked", CHUNKED)) * 2:
                writer.write(ask("GET", path))
                head = await reader.readuntil(b"\r\n\r\n")
                if b"chunked" in head:
                    body = b""
                    while size := int(await reader.readuntil(b"\r\n"), 16):
                        body += (await reader.readexactly(size + 2))[:-2]
                    assert await reader.readexactly(2) == b"\r\n"
                else:
                    body = await reader.readexactly(len(data))
                assert body == data
        finally:
            writer.close()
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    assert (outcomes["answered"], outcomes["handed_off"]) == (4, 0)
    assert origin.hits == {"/private": 2, "/chunked": 2}


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_an_origin_that_fails_mid_body_cuts_the_answer_short_and_the_next_gets_its_own(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """The origin sends half a private body, then drops its connection: the client gets the head and that half,
    then the connection is cut, never padded or wrong bytes. A new connection gets a whole answer."""
    cut = {"on": True}

    async def half(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if not cut["on"]:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "private"})
        resp.content_length = len(PRIVATE)
        await resp.prepare(request)
        await resp.write(PRIVATE[: MiB + 5])
        assert request.transport is not None
        request.transport.abort()
        return resp

    origin.put("/private", PRIVATE, headers={"Cache-Control": "private"})
    origin.on_request = half
    log = tmp_path / "access.log"
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, access_log=log)
    async with start_edge(config) as edge, asyncio.timeout(30):
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(ask("GET", "/private"))
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read(-1)  # to the cut
            finally:
                writer.close()
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert f"\r\nContent-Length: {len(PRIVATE)}\r\n".encode() in head
            assert 0 < len(body) < len(PRIVATE)
            assert PRIVATE.startswith(body)
        cut["on"] = False
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(ask("GET", "/private", close=True))
            raw = await reader.read(-1)
        finally:
            writer.close()
    assert raw.endswith(b"\r\n\r\n" + PRIVATE)
    lines = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert [(x["status"], x["cache"]) for x in lines] == [(0, "miss"), (0, "miss"), (200, "miss")]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_client_that_leaves_mid_body_lets_the_fill_go(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """A viewer resets its connection after the head of a large private answer: the fill it alone read stops (it
    would otherwise hold its origin connection), and the node answers the next viewer in full."""
    big = PRIVATE * 8  # 24 MiB: more than the socket buffers on both sides hold
    origin.put("/big", big, headers={"Cache-Control": "private"})
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(30):
        engine = edge.node.engine
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(ask("GET", "/big"))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1000)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        await until(lambda: not engine._tasks)  # the fill stopped: nobody reads it
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(ask("GET", "/big", close=True))
            raw = await reader.read(-1)
        finally:
            writer.close()
    assert raw.endswith(b"\r\n\r\n" + big)
    assert origin.hits["/big"] == 2


RAW = {  # exact origin answers, without the fields aiohttp's own server would add (Content-Type, Date)
    "/no-type": b"HTTP/1.1 200 OK\r\nCache-Control: private\r\nContent-Length: 5\r\n\r\nhello",
    "/empty": b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n",
    "/chunks": b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3\r\n wo\r\n0\r\n\r\n",
    # Storable but of unknown length: streamed as it comes, and its miss is a cold one, not an uncacheable one
    "/public-chunks": b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/no-content": b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n",
}
RAW_ASKED = [  # GETs first: the fast path's; then what it leaves to aiohttp, which keeps the connection from there
    ("GET", "/no-type"),
    ("GET", "/empty"),
    ("GET", "/chunks"),
    ("GET", "/public-chunks"),
    ("HEAD", "/chunks"),
    ("GET", "/no-content"),
]


def raw_reply(request: RawRequest) -> RawReply:
    answer = RAW[request.path]
    return (answer.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" if request.method == "HEAD" else answer), False


def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for name in ("edgecache_requests_total", "edgecache_misses_total"):
        for metric in applied().restricted_registry([name]).collect():
            for s in metric.samples:
                if s.name == name:
                    out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_odd_origin_answers_not_stored_are_streamed_byte_for_byte_alike(tmp_path: Path) -> None:
    """Each asked twice in a row, pipelined, with a Connection: close request last: an answer without a type gets
    none (proxy.exact), one of unknown length is sent chunked, a HEAD of it gets no Transfer-Encoding, a 204 no
    framing at all; the counters (the misses' causes too) and logs agree."""
    origin = RawOrigin(raw_reply)
    await origin.start()
    got: dict[bool, tuple[bytes, list[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    try:
        for fast in (True, False):
            log = tmp_path / f"{fast}.log"
            config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast, access_log=log)
            async with start_edge(config) as edge, asyncio.timeout(30):
                before = counted()
                reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
                try:
                    writer.write(b"".join(ask(m, p) * 2 for m, p in RAW_ASKED) + ask("GET", "/no-type", True))
                    raw = await reader.read(-1)
                finally:
                    writer.close()
                after = counted()
            lines = [json.loads(x) for x in log.read_bytes().splitlines()]
            logged = [f"{x['method']} {x['path']} {x['status']} {x['cache']} {x['bytes']}" for x in lines]
            delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
            got[fast] = re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", raw), logged, delta
    finally:
        await origin.stop()
    assert got[True] == got[False]
    raw = got[True][0]
    assert raw.count(b"HTTP/1.1 ") == 2 * len(RAW_ASKED) + 1
    # No type added where the origin sent none (proxy.exact): the only one is /public-chunks' own, on its GETs
    assert raw.count(b"\r\nContent-Type: ") == raw.count(b"\r\nContent-Type: text/plain\r\n") == 2
    assert raw.endswith(b"Connection: close\r\n\r\nhello")
    misses = {dict(k[1])["cause"]: v for k, v in got[True][2].items() if k[0] == "edgecache_misses_total"}
    assert misses == {"uncacheable": 11, "cold": 1}  # /public-chunks is stored once whole: then a hit


async def test_odd_answers_not_stored_are_the_fast_paths(tmp_path: Path) -> None:
    origin = RawOrigin(raw_reply)
    await origin.start()
    try:
        config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=True)
        async with start_edge(config) as edge, asyncio.timeout(30):
            before = fast_path_outcomes()
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                for method, path in RAW_ASKED[:4]:
                    writer.write(ask(method, path))
                    head = await reader.readuntil(b"\r\n\r\n")
                    if b"chunked" in head:
                        await reader.readuntil(b"0\r\n\r\n")
                    else:
                        await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))  # type: ignore[index]
            finally:
                writer.close()
            outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    finally:
        await origin.stop()
    assert (outcomes["answered"], outcomes["handed_off"]) == (4, 0)


async def test_a_204_miss_is_streamed_on_the_fast_path_as_the_full_handler_streams_it(
    origin: Origin, tmp_path: Path
) -> None:
    """An origin's 204 (no body, no length): stored, private or not stored, each asked twice in a row, pipelined.
    The miss is answered from its fill on the fast path, then the stored one is a hit: the same heads, log lines
    and origin requests as the full handler's, and no hand-off."""
    origin.put("/nc", b"", status=204, headers={"Cache-Control": "max-age=60", "X-Kind": "stored"})
    origin.put("/nc-private", b"", status=204, headers={"Cache-Control": "private", "X-Kind": "private"})
    origin.put("/nc-nostore", b"", status=204, headers={"Cache-Control": "no-store", "X-Kind": "not stored"})
    paths = ["/nc", "/nc", "/nc-private", "/nc-private", "/nc-nostore", "/nc-nostore"]
    results = {}
    for fast in (True, False):
        origin.hits.clear()
        log = tmp_path / f"{fast}.log"
        config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast, access_log=log)
        before = fast_path_outcomes()
        async with start_edge(config) as edge, asyncio.timeout(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(b"".join(ask("GET", p) for p in paths) + ask("GET", "/nc", close=True))
                raw = await reader.read(-1)
            finally:
                writer.close()
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
        lines = [json.loads(x) for x in log.read_bytes().splitlines()]
        logged = [f"{x['path']} {x['status']} {x['cache']} {x['bytes']} {x['upstream']}" for x in lines]
        heads = re.sub(rb"\r\n(Date|Age): [^\r]*", rb"\r\n\1: -", raw).split(b"\r\n\r\n")
        results[fast] = (heads, logged, dict(origin.hits), outcomes)
    fast_result, full_result = results[True], results[False]
    assert fast_result[:3] == full_result[:3]
    heads, logged, hits, outcomes = fast_result
    assert heads[-1] == b""  # nothing after the last head: no body, no chunk
    assert [h.split(b"\r\n", 1)[0] for h in heads[:-1]] == [b"HTTP/1.1 204 No Content"] * 7
    assert not any(b"\r\nContent-Length:" in h or b"\r\nTransfer-Encoding:" in h for h in heads)
    assert logged == [
        "/nc 204 miss 0 origin", "/nc 204 hit 0 cache", "/nc-private 204 miss 0 origin",
        "/nc-private 204 miss 0 origin", "/nc-nostore 204 miss 0 origin", "/nc-nostore 204 miss 0 origin",
        "/nc 204 hit 0 cache",
    ]  # fmt: skip
    assert hits == {"/nc": 1, "/nc-private": 2, "/nc-nostore": 2}
    assert (outcomes["answered"], outcomes["handed_off"]) == (7, 0)
