"""A miss of an object the node knows nothing of is the fast path's too (proxy.coldmiss): it starts the fill, and once
the origin's head is in, answers as the full handler would (same head but for Date and Age, same bytes, same log
line), without handing the connection to aiohttp. What it does not answer itself (an answer it may not store, an origin
that fails) goes to aiohttp with the fill it started, so the origin is asked exactly as often as the full handler
alone asks it."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes, read_answer

MiB = 2**20
DATA = bytes((i * 7 + i // 4099) % 256 for i in range(2 * MiB + 333))
ASKS = [  # (method, path, Range): each twice, on objects of their own
    ("GET", "/whole", ""),
    ("GET", "/ranged", "bytes=1048000-1049999"),
    ("GET", "/open", "bytes=2097000-"),
    ("GET", "/suffix", "bytes=-100"),
    ("HEAD", "/head", ""),
    ("GET", "/multi", "bytes=0-9,1048000-1049999"),  # multipart (proxy.multipart), within core.fillcost's bound
]
BOUNDARY = re.compile(rb"[0-9a-f]{24}")  # a multipart answer's, new for each (respond.multipart)


async def ask(port: int, method: str, path: str, rng: str) -> tuple[bytes, bytes]:
    """One request on a connection of its own: the answer's head without its Date and Age lines, and its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = f"Range: {rng}\r\n" if rng else ""
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: video.test\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (x.partition(b": ") for x in lines) if k.lower() == b"content-length")
        body = b"" if method == "HEAD" else await reader.readexactly(length)
        # Date, and Age (a second boundary may fall between two edges' fills: both right), are the clock's.
        assert all(x in (b"Age: 0", b"Age: 1") for x in lines if x.startswith(b"Age: "))
        kept = b"\r\n".join(x for x in lines if not x.startswith((b"Date: ", b"Age: ")))
        return BOUNDARY.sub(b"BOUNDARY", kept), BOUNDARY.sub(b"BOUNDARY", body)
    finally:
        writer.close()


async def answers(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    config = make_config(tmp_path / ("fast" if fast else "full"), [origin.url])
    config = replace(config, fast_path=fast, access_log=tmp_path / f"{fast}.log")
    async with start_edge(config) as edge, asyncio.timeout(30):
        got = [await ask(edge.port, m, f"{p}{n}", r) for m, p, r in ASKS for n in (1, 2)]
    lines = [json.loads(x) for x in (tmp_path / f"{fast}.log").read_bytes().splitlines()]
    return got, [
        f"{x['method']} {x['path']} {x['status']} {x['cache']} {x['bytes']} {x['origin_ms'] is not None}" for x in lines
    ]


async def test_a_cold_miss_is_answered_on_the_fast_path_as_the_full_handler_answers_it(
    origin: Origin, tmp_path: Path
) -> None:
    for _, path, _ in ASKS:
        for n in (1, 2):
            origin.put(f"{path}{n}", DATA)
    before = fast_path_outcomes()
    fast, fast_log = await answers(origin, tmp_path, fast=True)
    outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    by_fast = dict(origin.hits)
    full, full_log = await answers(origin, tmp_path, fast=False)
    by_full = {k: v - by_fast.get(k, 0) for k, v in origin.hits.items()}
    assert fast == full
    assert fast_log == full_log
    assert [head.split(b"\r\n")[0] for head, _ in fast] == [b"HTTP/1.1 200 OK"] * 2 + [
        b"HTTP/1.1 206 Partial Content"
    ] * 6 + [b"HTTP/1.1 200 OK"] * 2 + [b"HTTP/1.1 206 Partial Content"] * 2
    assert all(b"\r\nCache-Status: edgecache; fwd=uri-miss; stored\r\n" in head for head, _ in fast)
    parts = b"".join(
        b"\r\n--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
        % (a, b, len(DATA))
        + DATA[a : b + 1]
        for a, b in ((0, 9), (1048000, 1049999))
    )
    assert [body for _, body in fast] == [DATA] * 2 + [DATA[1048000:1050000]] * 2 + [DATA[2097000:]] * 2 + [
        DATA[-100:]
    ] * 2 + [b""] * 2 + [parts + b"\r\n--BOUNDARY--\r\n"] * 2
    assert outcomes == {"answered": 12, "handed_off": 0, "taken_back": 0, "forwarded": 0}
    assert by_fast == by_full
    # A suffix learns the length from slice 0; the multipart's fill brings its first part's slice, then the next.
    assert [by_fast[f"{p}1"] for _, p, _ in ASKS] == [1, 1, 1, 2, 1, 2]


async def test_what_the_fast_path_does_not_answer_asks_the_origin_no_more_than_the_full_handler(
    origin: Origin, tmp_path: Path
) -> None:
    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if not request.path.startswith("/gone"):
            return None
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response(status=500)  # never sent

    origin.put("/private1", b"mine", headers={"Cache-Control": "private"})
    origin.put("/private2", b"mine", headers={"Cache-Control": "private"})
    origin.put("/gone1", b"x")
    origin.put("/gone2", b"x")
    hits: dict[bool, dict[str, int]] = {}
    failures: dict[bool, list[tuple[bytes, bytes]]] = {}
    logged: dict[bool, list[str]] = {}
    for fast in (True, False):
        origin.hits.clear()
        origin.on_request = hook
        config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast)
        config = replace(config, access_log=tmp_path / f"{fast}.log")
        before = fast_path_outcomes()
        async with start_edge(config) as edge, asyncio.timeout(30):
            failures[fast] = []
            for n in (1, 2):
                assert await ask(edge.port, "GET", f"/private{n}", "") == (
                    await ask(edge.port, "GET", f"/private{n}", "")
                )
                head, body = await ask(edge.port, "GET", f"/gone{n}", "")
                assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), head
                assert body.startswith(b"origin failed: ")
                failures[fast].append((head, body))
        if fast:  # every one answered on the fast path: the private ones streamed from their fills (uncached)
            after = fast_path_outcomes()
            assert {k: after[k] - before[k] for k in ("answered", "handed_off")} == {"answered": 6, "handed_off": 0}
        hits[fast] = dict(origin.hits)
        lines = [json.loads(x) for x in (tmp_path / f"{fast}.log").read_bytes().splitlines()]
        logged[fast] = [f"{x['path']} {x['status']} {x['cache']} {x['bytes']} {x['upstream']}" for x in lines]
    assert hits[True] == hits[False]
    assert hits[True]["/private1"] == 2
    assert failures[True] == failures[False]  # byte for byte, but Date
    assert logged[True] == logged[False]
    assert [x for x in logged[True] if x.startswith("/gone")] == [
        f"/gone{n} 502 error {len(failures[True][0][1])} -" for n in (1, 2)
    ]


async def until(condition: Callable[[], bool]) -> None:
    """Polled: what it waits for happens inside the node, with no event to wait on."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fast", [True, False])
async def test_a_request_that_joined_a_cold_miss_never_gets_the_starters_own_fields(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    fields = {"Cache-Control": 'public, max-age=3600, private="X-User"', "X-User": "alice"}
    origin.put("/c", b"hello", headers=fields)
    origin.gate = asyncio.Event()
    config = replace(make_config(tmp_path, [origin.url]), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(20):
        handler = edge.node.shared
        ra, wa = await asyncio.open_connection("127.0.0.1", edge.port)
        rb, wb = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            wa.write(b"GET /c HTTP/1.1\r\nHost: video.test\r\n\r\n")
            await origin.wait_for_requests(1)
            wb.write(b"GET /c HTTP/1.1\r\nHost: video.test\r\n\r\n")
            await until(lambda: handler.in_flight == 2)  # both wait for the one head the origin holds
            origin.gate.set()
            _, fa, body_a = await read_answer(ra)
            _, fb, body_b = await read_answer(rb)
        finally:
            wa.close()
            wb.close()
    assert (body_a, body_b, origin.hits["/c"]) == (b"hello", b"hello", 1)
    assert fa[b"x-user"] == b"alice"  # the starter's own
    assert b"x-user" not in fb  # never another client's


async def head_then_cut(request: web.BaseRequest) -> web.StreamResponse:
    """The origin's head of a 100,000-byte answer, then its connection cut: not one byte of the body."""
    resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=60", "ETag": '"v1"'})
    resp.content_length = 100_000
    await resp.prepare(request)
    await resp.drain()
    assert request.transport is not None
    request.transport.close()
    return resp


@pytest.mark.parametrize("fast", [True, False])
async def test_a_body_that_fails_before_its_first_byte_is_a_502_from_one_origin_request(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    async def head_only(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        return None if origin.hits["/cut"] > 1 else await head_then_cut(request)

    origin.put("/cut", b"x" * 100_000)
    origin.on_request = head_only
    config = replace(make_config(tmp_path, [origin.url]), fast_path=fast)
    before = fast_path_outcomes()["handed_off"]
    async with start_edge(config) as edge, asyncio.timeout(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"GET /cut HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:200]
    assert b"\r\n\r\norigin failed: origin body broken: " in answer
    assert origin.hits["/cut"] == 1
    assert fast_path_outcomes()["handed_off"] == before  # the fast path's own 502


@pytest.mark.parametrize("fast", [True, False])
async def test_a_private_miss_whose_client_left_lets_its_fill_go(origin: Origin, tmp_path: Path, fast: bool) -> None:
    release = asyncio.Event()

    async def hold_head(request: web.BaseRequest, obj: object) -> None:
        await release.wait()

    origin.put("/p", bytes(32 * MiB), headers={"Cache-Control": "private"})  # far past a fill's bound
    origin.on_request = hold_head
    config = replace(make_config(tmp_path, [origin.url], slice_bytes=65536), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(20):
        engine = edge.node.engine
        _, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /p HTTP/1.1\r\nHost: video.test\r\n\r\n")
        await origin.wait_for_requests(1)
        # The client resets the connection while the origin's head is awaited (a FIN alone is a half-close, after
        # which the answer is still sent).
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        if fast:  # the fast path lets the fill go at once; aiohttp's handler learns it when it writes
            await until(lambda: any(f._reader_gone for fs in engine.fills._by_key.values() for f in fs))
        release.set()
        await until(lambda: not engine._tasks)  # the fill stopped: nobody would ever read it


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_miss_on_a_rate_limited_node_spends_one_token(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """With a rate limit, a miss is the fast path's too, and spends one token of its client's, as a hit does: the
    limiter is asked once, when its fill is started, not again when the origin's head is in (nor by aiohttp,
    should the answer be left to it). A burst of 4 with a rate too low to refill: 4 answers, then 429."""
    origin.put("/a", DATA)
    # Not stored: streamed from the fill the fast path started (proxy.uncached).
    origin.put("/private", b"p" * 1000, headers={"Cache-Control": "private"})
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, rate_limit=0.001, burst=4.0)
    async with start_edge(config) as edge, asyncio.timeout(20):
        before = fast_path_outcomes()
        statuses = []
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for path in ("/a", "/private", "/a", "/a", "/a"):  # a miss, an adopted miss, two hits, one too many
                writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode())
                status, _, body = await read_answer(reader)
                statuses.append(status)
                if status == 200:
                    assert body == origin.objects[path].data
        finally:
            writer.close()
        after = fast_path_outcomes()
    assert statuses == [200, 200, 200, 200, 429]
    assert origin.hits["/a"] == 1
    assert origin.hits["/private"] == 1
    if fast:  # all on the fast path: the private answer streamed from its fill, the 429 refused (core.admit)
        assert {k: after[k] - before[k] for k in ("answered", "handed_off")} == {"answered": 5, "handed_off": 0}


def read_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v.strip()) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_429_says_when_the_next_token_comes(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """Retry-After is when the client's bucket holds a token again at the limit's rate (rounded up, at least 1 s):
    at 0.001 requests a second, an empty bucket refills one token in 1,000 s, not 1 s. Of a hit, a miss, a HEAD."""
    origin.put("/a", DATA[:3000])
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, rate_limit=0.001, burst=2.0)
    async with start_edge(config) as edge, asyncio.timeout(20):
        answers = []
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for method, path in (("GET", "/a"), ("GET", "/a"), ("GET", "/a"), ("GET", "/b"), ("HEAD", "/a")):
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode())
                if method == "HEAD":  # a head alone: its Content-Length is the GET's
                    head = await reader.readuntil(b"\r\n\r\n")
                    status, fields, body = int(head[9:12]), dict(read_fields(head)), b""
                else:
                    status, fields, body = await read_answer(reader)
                answers.append((status, fields.get(b"retry-after"), body))
        finally:
            writer.close()
    refused = (429, b"1000", b"too many requests from this address\n")
    assert answers == [(200, None, DATA[:3000]), (200, None, DATA[:3000]), refused, refused, (429, b"1000", b"")]
    assert origin.hits["/a"] == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_revalidation_on_a_rate_limited_node_spends_one_token(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """An entry that must be revalidated each time (no-cache): its revalidation is started and, once the origin says
    304, answered from the entry; the limiter is asked once for it, as for any request. Burst 4: 4 answers, 429."""
    origin.put("/nc", DATA[:5000], headers={"Cache-Control": "no-cache"})
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, rate_limit=0.001, burst=4.0)
    async with start_edge(config) as edge, asyncio.timeout(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        statuses = []
        try:
            for _ in range(5):
                writer.write(b"GET /nc HTTP/1.1\r\nHost: video.test\r\n\r\n")
                status, fields, body = await read_answer(reader)
                statuses.append((status, fields.get(b"cache-status", b"").decode()))
                if status == 200:
                    assert body == DATA[:5000]
        finally:
            writer.close()
    revalidated = "edgecache; fwd=stale; fwd-status=304"
    assert statuses == [
        (200, "edgecache; fwd=uri-miss; stored"),
        (200, revalidated),
        (200, revalidated),
        (200, revalidated),
        (429, statuses[4][1]),
    ]
    assert origin.hits["/nc"] == 4


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_head_whose_origin_fails_gets_a_502_head_without_a_body_twice_on_one_connection(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """The origin closes without an answer: each HEAD gets the 502's head alone (its Content-Length names the body
    a GET would get), so the next answer on the connection starts where the client expects it."""

    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)  # never sent

    origin.put("/gone", b"x")
    origin.on_request = hook
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"HEAD /gone HTTP/1.1\r\nHost: video.test\r\n\r\n" * 2)
            writer.write(b"GET /gone HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
            heads = []
            for _ in range(2):
                heads.append(await reader.readuntil(b"\r\n\r\n"))
            rest = await reader.read(-1)
        finally:
            writer.close()
    assert all(h.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") for h in heads), heads
    head, _, body = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), rest
    assert body.startswith(b"origin failed: ")
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head + b"\r\n"
    assert origin.hits["/gone"] == 6  # three requests, each tried twice (a dropped connection is retried once)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_request_that_joined_a_fill_spends_one_token_whoever_answers_it(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Burst 2, two viewers' misses of one object at once, from one address: the second joins the first's fill, and
    when the full handler answers it (the answer is private: not the joiner's to read), it does not ask the limiter
    again. Both get 200, then a third request 429."""
    release = asyncio.Event()

    async def held(request: web.BaseRequest, obj: object) -> None:
        await release.wait()

    origin.put("/p", DATA[:3000], headers={"Cache-Control": "private"})
    origin.on_request = held
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, rate_limit=0.001, burst=2.0)
    async with start_edge(config) as edge, asyncio.timeout(20):
        connections = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
        try:
            for _, writer in connections:
                writer.write(b"GET /p HTTP/1.1\r\nHost: video.test\r\n\r\n")
            await until(lambda: edge.node.shared.in_flight == 2)  # both wait for the one head the origin holds
            release.set()
            statuses = [(await read_answer(reader))[0] for reader, _ in connections]
            writer = connections[0][1]
            writer.write(b"GET /p HTTP/1.1\r\nHost: video.test\r\n\r\n")
            statuses.append((await read_answer(connections[0][0]))[0])
        finally:
            for _, writer in connections:
                writer.close()
    assert statuses == [200, 200, 429]


async def failing_misses(origin: Origin, tmp_path: Path, fast: bool) -> list[dict[str, object]]:
    """A ranged miss whose fill's body fails before its first byte, and one whose origin answers another range
    than its fill asked for (held 0.3 s first), asked with a Host written as clients may write it. Their log
    records, without the request id and the fields of the clock (`ms` in whole tenths of a second)."""

    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.path == "/cut":
            return await head_then_cut(request)
        if request.path == "/wrong" and request.headers.get("Range") == f"bytes=0-{MiB - 1}":  # the fill's
            await asyncio.sleep(0.3)
            fields = {"Content-Range": f"bytes 5-{MiB + 4}/{len(DATA)}", "ETag": '"w"', "Cache-Control": "max-age=60"}
            return web.Response(status=206, body=DATA[5 : 5 + MiB], headers=fields)
        return None

    origin.put("/wrong", DATA)
    origin.on_request = hook
    log = tmp_path / f"{fast}.log"
    config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast, access_log=log)
    async with start_edge(config) as edge, asyncio.timeout(20):
        for path in ("/cut", "/wrong"):
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: Video.Test:80\r\nRange: bytes=0-99\r\n\r\n".encode())
                status, _, _ = await read_answer(reader)
                assert status == (502 if path == "/cut" else 206)
            finally:
                writer.close()
    records = [json.loads(x) for x in log.read_bytes().splitlines()]
    clock = ("time", "id", "ttfb_ms", "origin_ms")
    return [{k: v if k != "ms" else int(v) // 100 for k, v in r.items() if k not in clock} for r in records]


async def test_failed_misses_are_logged_on_the_fast_path_as_the_full_handler_logs_them(
    origin: Origin, tmp_path: Path
) -> None:
    """The Range asked (not the whole-object answer's), the key's host, and the time from when the miss began."""
    before = fast_path_outcomes()["handed_off"]
    fast = await failing_misses(origin, tmp_path, True)
    assert fast_path_outcomes()["handed_off"] == before
    full = await failing_misses(origin, tmp_path, False)
    assert [{**r, "ms": None} for r in fast] == [{**r, "ms": None} for r in full]
    assert [(r["path"], r["host"], r["range"], r["status"]) for r in fast] == [
        ("/cut", "video.test", "bytes=0-99", 502),
        ("/wrong", "video.test", "bytes=0-99", 206),
    ]
    assert fast[1]["ms"] >= 3  # the origin's first answer took 0.3 s of it
    assert full[1]["ms"] >= 3


@pytest.mark.parametrize("fast", [True, False])
async def test_a_miss_logs_its_time_to_first_byte(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """The origin holds its answer 0.2 s: the miss's log line says so in ttfb_ms (the fast path's said 0)."""

    async def slow(request: web.BaseRequest, obj: object) -> None:
        await asyncio.sleep(0.2)

    origin.put("/slow", DATA)
    origin.on_request = slow
    log = tmp_path / "access.log"
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast, access_log=log)
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/slow", Range="bytes=0-99")
        assert (status, body) == (206, DATA[:100])
    (record,) = [json.loads(x) for x in log.read_bytes().splitlines()]
    assert 200 <= record["ttfb_ms"] <= record["ms"]


@pytest.mark.parametrize("fast", [True, False])
async def test_requests_that_joined_a_fill_the_origin_failed_get_its_502_from_one_fill(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Those that joined a fill the origin fails get the failure, as its starter does: on the fast path they went
    to the full handler, which asked the origin once more, so each waited for two timeouts of a stalled origin."""
    go = asyncio.Event()

    async def fails(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        await go.wait()
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response(status=500)  # never sent

    origin.put("/gone", b"x")
    origin.on_request = fails
    config = replace(make_config(tmp_path, [origin.url]), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(20):
        fills = edge.node.engine.fills
        conns = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(3)]
        try:
            for _, writer in conns:
                writer.write(b"GET /gone HTTP/1.1\r\nHost: video.test\r\n\r\n")
            # All wait for the one head the origin holds: all three expect its one fill. In flight alone was not
            # that: on a loaded machine one was still looking (a disk read) when the origin failed the fill, and
            # started a second fill (4 origin requests, not 2).
            await until(lambda: [len(f.expecting) for fs in fills._by_key.values() for f in fs] == [3])
            go.set()
            answers = [await read_answer(reader) for reader, _ in conns]
        finally:
            for _, writer in conns:
                writer.close()
    assert [status for status, _, _ in answers] == [502, 502, 502]
    assert all(body.startswith(b"origin failed: ") for _, _, body in answers)
    assert origin.hits["/gone"] == 2  # one fill: aiohttp sends a GET again once when it is closed on unanswered
