"""A GET or HEAD the cache does not answer (a client's no-store or credentials, a conditional request for an object
not stored) is passed to the origin on the fast path (proxy/passing.py), byte for byte as the full handler passes it
through: the same answers, the same requests at the origin, the same log lines, and no hand-off to aiohttp."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin, RawOrigin, RawReply, RawRequest
from tests.samples import sample_value
from tests.wire import exchange, fast_path_outcomes

BODY = bytes(range(256)) * 40


def ask(method: str, path: str, *fields: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: video.test", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


ASKS = [  # each twice in a row, pipelined on one connection
    ask("GET", "/auth", "Authorization: Bearer alice"),
    ask("GET", "/auth", "Authorization: Bearer alice", "Range: bytes=2-5"),  # the origin's 206, passed on
    ask("HEAD", "/auth", "Authorization: Bearer alice"),
    ask("GET", "/nostore", "Cache-Control: no-store"),
    ask("HEAD", "/nostore", "Cache-Control: no-store"),
    ask("GET", "/chunked", "Cache-Control: no-store"),  # sent chunked by the origin: relayed chunked
    ask("GET", "/missing", "Authorization: Bearer bob"),  # the origin's 404
    ask("GET", "/cond", 'If-None-Match: "v1"'),  # nothing stored: the origin's 304
    ask("GET", "/cond2", 'If-None-Match: "other"'),  # nothing stored: the origin's 200
    ask("GET", "/private", "Range: bytes=2-5"),  # its fill's answer may not be stored: asked again with the Range
    ask("HEAD", "/private"),  # a HEAD's fill asks for the first slice: asked again as a HEAD
]
LAST = ask("GET", "/auth", "Authorization: Bearer alice", "Connection: close")
_DATE = re.compile(rb"\r\nDate: [^\r]*")


async def chunked(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
    """The origin's answer of unknown length for a path under /chunked: chunked, in three pieces."""
    if not request.path.startswith("/chunked"):
        return None
    return await in_pieces(request, "max-age=60")


async def in_pieces(request: web.BaseRequest, cache_control: str) -> web.StreamResponse:
    """The answer of unknown length, `first second third`, chunked in three pieces."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Cache-Control": cache_control})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"first ", b"second ", b"third\n"):
        await resp.write(part)
    await resp.write_eof()
    return resp


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[bytes, list[str], dict[str, float]]:
    config = replace(make_config(tmp_path / str(fast), [origin.url]), fast_path=fast)
    config = replace(config, access_log=tmp_path / f"{fast}.log")
    before = fast_path_outcomes()
    async with start_edge(config) as edge, asyncio.timeout(30):
        raw = await exchange(edge.port, b"".join(a + a for a in ASKS) + LAST)
    after = fast_path_outcomes()
    lines = [json.loads(x) for x in (tmp_path / f"{fast}.log").read_bytes().splitlines()]
    logged = [f"{x['method']} {x['path']} {x['status']} {x['cache']} {x['bytes']} {x['upstream']}" for x in lines]
    return _DATE.sub(b"\r\nDate: -", raw), logged, {k: after[k] - before[k] for k in after}


async def test_passes_are_the_fast_paths_and_the_full_handlers_bytes(origin: Origin, tmp_path: Path) -> None:
    origin.put("/auth", BODY, headers={"Cache-Control": "private"})
    origin.put("/nostore", BODY)
    origin.put("/chunked", b"")
    origin.put("/cond", BODY)
    origin.put("/cond2", BODY)
    origin.put("/private", BODY, headers={"Cache-Control": "private"})
    origin.on_request = chunked
    fast, fast_log, outcomes = await run(origin, tmp_path, fast=True)
    seen_fast = [(s.method, s.path, s.headers) for s in origin.seen]
    hits_fast = dict(origin.hits)
    origin.seen.clear()
    origin.hits.clear()
    full, full_log, _ = await run(origin, tmp_path, fast=False)
    assert fast == full
    assert fast_log == full_log
    assert [(s.method, s.path, s.headers) for s in origin.seen] == seen_fast
    assert dict(origin.hits) == hits_fast == {
        "/auth": 7, "/nostore": 4, "/chunked": 2, "/missing": 2, "/cond": 2, "/cond2": 2, "/private": 8
    }  # fmt: skip
    assert outcomes == {"answered": 23, "handed_off": 0, "taken_back": 0, "forwarded": 0}
    statuses = [int(x.split(b" ", 2)[1]) for x in re.findall(rb"HTTP/1\.1 \d{3} ", fast)]
    by_ask = [200, 206, 200, 200, 200, 200, 404, 304, 200, 206, 200]
    assert statuses == [s for s in by_ask for _ in (1, 2)] + [200]
    assert fast.count(b"\r\nTransfer-Encoding: chunked\r\n") == 2
    assert fast.count(b"6\r\nfirst \r\n7\r\nsecond \r\n6\r\nthird\n\r\n0\r\n\r\n") == 2
    assert fast.count(b"\r\nCache-Status: edgecache; fwd=bypass\r\n") == 15  # PASS: the client's fields
    assert fast.count(b"\r\nCache-Status: edgecache; fwd=uri-miss\r\n") == 4  # the conditional misses
    assert fast.count(b'\r\nCache-Status: edgecache; fwd=uri-miss; detail="private"\r\n') == 4  # why not stored
    assert all(s[2].get("Authorization") == "Bearer alice" for s in seen_fast if s[1] == "/auth")
    passed = [s[2] for s in seen_fast if "X-Forwarded-For" in s[2]]  # a fill names no client
    assert len(passed) == 23
    assert all(h["X-Forwarded-For"] == "127.0.0.1" and h["Host"] == "video.test" for h in passed)
    assert fast_log[-1] == f"GET /auth 200 pass {len(BODY)} origin"


async def test_an_origin_that_cannot_be_reached_gets_the_same_502_on_both_paths(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: connections to it are refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    answers = []
    for fast in (True, False):
        config = replace(make_config(tmp_path / str(fast), [dead]), fast_path=fast)
        before = fast_path_outcomes()
        async with start_edge(config) as edge, asyncio.timeout(30):
            one = ask("GET", "/auth", "Authorization: Bearer alice")
            last = ask("HEAD", "/x", "Cache-Control: no-store", "Connection: close")
            raw = await exchange(edge.port, one + one + last)
        if fast:
            assert fast_path_outcomes()["handed_off"] == before["handed_off"]
        answers.append(_DATE.sub(b"\r\nDate: -", raw))
    assert answers[0] == answers[1]
    assert answers[0].count(b"HTTP/1.1 502 Bad Gateway\r\n") == 3
    assert b"origin failed: " in answers[0]


async def both(tmp_path: Path, reply: Callable[[RawRequest], RawReply], data: bytes) -> dict[bool, Answered]:
    """`data` sent to an edge on each path in front of a raw origin: the bytes back (Date aside), the log lines
    (status, cache, bytes, upstream, whether origin_ms is known) and the served bytes counted."""
    origin = RawOrigin(reply)
    await origin.start()
    got = {}
    try:
        for fast in (True, False):
            log = tmp_path / f"raw-{fast}.log"
            config = replace(make_config(tmp_path / f"raw-{fast}", [origin.url]), fast_path=fast, access_log=log)
            before = sample_value("edgecache_site_served_bytes_total", {"site": "videos", "upstream": "origin"}) or 0
            async with start_edge(config) as edge, asyncio.timeout(30):
                raw = await exchange(edge.port, data)
            served = sample_value("edgecache_site_served_bytes_total", {"site": "videos", "upstream": "origin"})
            lines = [json.loads(x) for x in log.read_bytes().splitlines()]
            logged = [(x["status"], x["cache"], x["bytes"], x["upstream"], x["origin_ms"] is None) for x in lines]
            got[fast] = Answered(_DATE.sub(b"\r\nDate: -", raw), logged, (served or 0) - before)
    finally:
        await origin.stop()
    return got


@dataclass
class Answered:
    raw: bytes
    logged: list[tuple[object, ...]]
    served: float


async def test_a_pass_through_cut_mid_body_counts_and_logs_what_was_sent(tmp_path: Path) -> None:
    def reply(request: RawRequest) -> RawReply:  # 4,000 bytes of 100,000, then the origin closes
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n" + b"x" * 4000, True

    got = await both(tmp_path, reply, b"GET /cut HTTP/1.1\r\nHost: video.test\r\nAuthorization: Bearer a\r\n\r\n")
    assert got[True] == got[False]
    assert got[True].logged == [(0, "pass", 4000, "origin", False)]
    assert got[True].served == 4000


async def test_a_field_not_in_utf8_is_passed_on_byte_for_byte(tmp_path: Path) -> None:
    def reply(request: RawRequest) -> RawReply:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Name: caf\xe9\r\n\r\nok", False

    got = await both(tmp_path, reply, ask("GET", "/latin", "Cache-Control: no-store", "Connection: close"))
    assert got[True] == got[False]
    assert got[True].raw.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Name: caf\xe9\r\n")  # obs-text


async def test_a_miss_passed_through_whose_origin_then_fails_logs_its_fills_time(tmp_path: Path) -> None:
    def reply(request: RawRequest) -> RawReply:
        if (request.header("range") or "").startswith("bytes=0-"):  # the fill's: private, so asked again
            head = b'HTTP/1.1 206 Partial Content\r\nCache-Control: private\r\nETag: "v1"\r\n'
            return head + b"Content-Range: bytes 0-2999/3000\r\nContent-Length: 3000\r\n\r\n" + b"y" * 3000, False
        return b"", True  # the pass-through's: closed with no answer

    got = await both(tmp_path, reply, ask("GET", "/r", "Range: bytes=5-9", "Connection: close"))
    assert got[True] == got[False]
    assert got[True].raw.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert [x[1:] for x in got[True].logged] == [("error", len(got[True].raw.split(b"\r\n\r\n", 1)[1]), "-", False)]
