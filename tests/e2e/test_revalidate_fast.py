"""A stale entry is the fast path's too. Where the request or the response allows it (max-stale, stale-while-
revalidate, which also starts the revalidation), it is served stale; where it must be revalidated first
(proxy.coldmiss, lookup.find_cold), the fast path starts the conditional fill and, once the origin's head is in,
answers as the full handler would: revalidated from the stored entry on a 304, the new version (expired) on a 200,
and the stale entry when the origin fails (a 5xx, or a connection cut before its answer) and stale-if-error lets
it stand in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from edgecache.config import Config
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_body_shapes import settle
from tests.e2e.test_pass_fast import in_pieces
from tests.origin import Origin
from tests.wire import fast_path_outcomes

MiB = 2**20
OLD = bytes((i * 7 + i // 4099) % 256 for i in range(2 * MiB + 333))
NEW = bytes((i * 11 + 3) % 256 for i in range(MiB + 77))
SWR = bytes(range(250)) * 600  # 150,000 bytes


@dataclass(frozen=True)
class Answer:
    head: bytes  # without Date and Age, which are the clock's
    body: bytes
    age: int


async def ask(port: int, method: str, path: str, rng: str = "", more: str = "") -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = (f"Range: {rng}\r\n" if rng else "") + more
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: video.test\r\n{extra}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {k.lower(): v for k, _, v in (x.partition(b": ") for x in lines[1:] if x)}
        bodyless = method == "HEAD" or lines[0].startswith(b"HTTP/1.1 304 ")
        body = b"" if bodyless else await reader.readexactly(int(fields[b"content-length"]))
        kept = b"\r\n".join(x for x in lines if not x.startswith((b"Date: ", b"Age: ")))
        return Answer(kept, body, int(fields.get(b"age", b"-1")))  # -1: none (a pass-through's)
    finally:
        writer.close()


def age(edge: Edge, path: str, seconds: float) -> None:
    """Make the stored entry of `path` `seconds` older (its request and response times move back): no sleep."""
    key = f"videos|video.test|{path}"
    meta = edge.node.store.peek_meta(key)
    assert meta is not None
    older = replace(meta, request_time=meta.request_time - seconds, response_time=meta.response_time - seconds)
    edge.node.store.remember_meta(key, older)


CASES = [  # (method, path, Range, what the origin has when asked again)
    ("GET", "/same", "", "same"),
    ("GET", "/same-range", "bytes=1048000-1049999", "same"),
    ("HEAD", "/same-head", "", "same"),
    ("GET", "/changed", "", "changed"),
    ("GET", "/changed-range", "bytes=100-199", "changed"),
    ("GET", "/failing", "", "failing"),
    ("GET", "/broken", "", "failing"),
]


def failing(request: web.BaseRequest, obj: object) -> web.Response | None:
    """The origin once the entries are stale: a 503 for /failing; for /broken, its connection cut, no answer."""
    if request.path == "/broken":
        assert request.transport is not None
        request.transport.close()
    return web.Response(status=503) if request.path in ("/failing", "/broken") else None


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[Answer], list[str], dict[str, float]]:
    """Each case: filled, aged past its max-age, asked again (revalidated), then asked once more (a hit)."""
    for _, path, _, _ in CASES:
        origin.put(path, OLD, headers={"Cache-Control": "public, max-age=60, stale-if-error=600"})
    origin.on_request = None
    config = edge_config(origin, tmp_path, "", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for method, path, rng, _ in CASES:
            got.append(await ask(edge.port, method, path, rng))
        await settle(edge)  # a HEAD's fill of the whole object may outlive its answer: aged while it ran, it was joined
        for _, path, _, then in CASES:
            age(edge, path, 120)
            if then == "changed":
                origin.put(path, NEW, etag='"v2"', headers={"Cache-Control": "public, max-age=60"})
        origin.on_request = failing
        before = fast_path_outcomes()
        for method, path, rng, _ in CASES:
            got.append(await ask(edge.port, method, path, rng))
        for method, path, rng, then in CASES:
            if then != "failing":
                got.append(await ask(edge.port, method, path, rng))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    return got, logged(tmp_path / f"{fast}.log"), outcomes


Run = Callable[[Origin, Path, bool], Awaitable[tuple[list[Answer], list[str], dict[str, float]]]]


def edge_config(origin: Origin, tmp_path: Path, name: str, fast: bool) -> Config:
    """A run's node: its own cache directory and access log (`name` + fast or not), the fast path on or off."""
    config = replace(make_config(tmp_path / f"{name}{fast}", [origin.url]), fast_path=fast)
    return replace(config, access_log=tmp_path / f"{name}{fast}.log")


def logged(path: Path) -> list[str]:
    lines = [json.loads(x) for x in path.read_bytes().splitlines()]
    return [f"{x['method']} {x['path']} {x['status']} {x['cache']} {x['bytes']} {x['upstream']}" for x in lines]


async def on_both_paths(run: Run, origin: Origin, tmp_path: Path) -> tuple[list[Answer], list[str], dict[str, float]]:
    """`run` on the fast path, then with it off: the same answers (but Age, the clock's), log lines and origin
    requests. The fast path's answers, log lines and outcome counts."""
    fast, fast_log, outcomes = await run(origin, tmp_path, True)
    by_fast = dict(origin.hits)
    origin.hits.clear()
    full, full_log, _ = await run(origin, tmp_path, False)
    assert fast == [replace(a, age=b.age) for a, b in zip(full, fast, strict=True)]
    assert fast_log == full_log
    assert dict(origin.hits) == by_fast
    return fast, fast_log, outcomes


def cache_status(answer: Answer) -> bytes:
    return next(x for x in answer.head.split(b"\r\n") if x.startswith(b"Cache-Status: "))[len(b"Cache-Status: ") :]


async def test_a_stale_entry_is_revalidated_on_the_fast_path_as_the_full_handler_revalidates_it(
    origin: Origin, tmp_path: Path
) -> None:
    fast, fast_log, outcomes = await on_both_paths(run, origin, tmp_path)
    again = fast[len(CASES) : 2 * len(CASES)]
    assert [cache_status(a) for a in again] == [b"edgecache; fwd=stale; fwd-status=304"] * 3 + [
        b"edgecache; fwd=stale; stored"
    ] * 2 + [b'edgecache; hit; detail="stale-if-error"'] * 2
    assert [a.body for a in again] == [OLD, OLD[1048000:1050000], b"", NEW, NEW[100:200], OLD, OLD]
    assert all(a.age <= 1 for a in again[:5])  # fresh from the origin (a second may tick meanwhile)
    assert again[5].age >= 120
    assert again[6].age >= 120
    then = fast[2 * len(CASES) :]
    assert [cache_status(a) for a in then] == [b"edgecache; hit"] * 5
    assert [a.body for a in then] == [OLD, OLD[1048000:1050000], b"", NEW, NEW[100:200]]
    # Asked again: once each, a conditional request (/broken: asked again once its connection was cut, as the origin
    # client retries a request nothing was answered to). /changed: its new version is fetched a slice at a time, as
    # the stored entry was kept.
    assert dict(origin.hits) == {
        "/same": 2,
        "/same-range": 2,
        "/same-head": 2,
        "/changed": 3,
        "/changed-range": 2,
        "/failing": 2,
        "/broken": 3,
    }
    assert outcomes == {"answered": 12, "handed_off": 0, "taken_back": 0, "forwarded": 0}
    for path in ("/failing", "/broken"):
        assert [x for x in fast_log if x.startswith(f"GET {path} ")] == [
            f"GET {path} 200 miss {len(OLD)} origin",
            f"GET {path} 200 stale {len(OLD)} cache",
        ]


STALE_CASES = [  # (path, Range, request fields): each stored stale, then asked twice
    ("/swr", "", ""),
    ("/swr-range", "bytes=100-199", ""),
    ("/max-stale", "", "Cache-Control: max-stale=600\r\n"),
]


async def stale_run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[Answer], list[str], dict[str, float]]:
    origin.put("/swr", OLD, headers={"Cache-Control": "public, max-age=60, stale-while-revalidate=600"})
    origin.put("/swr-range", OLD, headers={"Cache-Control": "public, max-age=60, stale-while-revalidate=600"})
    origin.put("/max-stale", OLD, headers={"Cache-Control": "public, max-age=60"})
    config = edge_config(origin, tmp_path, "stale-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for path, rng, _ in STALE_CASES:
            got.append(await ask(edge.port, "GET", path, rng))
            age(edge, path, 120)
        before = fast_path_outcomes()
        for path, rng, more in STALE_CASES:
            got.append(await ask(edge.port, "GET", path, rng, more))
            tasks = edge.node.engine._tasks  # a stale-while-revalidate answer's revalidation, in the background
            if tasks:
                await asyncio.wait(list(tasks))
            got.append(await ask(edge.port, "GET", path, rng, more))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    return got, logged(tmp_path / f"stale-{fast}.log"), outcomes


async def test_a_stale_entry_the_request_or_response_allows_is_served_stale_on_the_fast_path(
    origin: Origin, tmp_path: Path
) -> None:
    fast, _, outcomes = await on_both_paths(stale_run, origin, tmp_path)
    stale = b'edgecache; hit; detail="stale"'
    # stale-while-revalidate: stale now, revalidated meanwhile (a 304), a hit next; max-stale: stale both times.
    assert [cache_status(a) for a in fast[3:]] == [stale, b"edgecache; hit", stale, b"edgecache; hit", stale, stale]
    assert [a.body for a in fast[3:]] == [OLD, OLD, OLD[100:200], OLD[100:200], OLD, OLD]
    assert dict(origin.hits) == {"/swr": 2, "/swr-range": 2, "/max-stale": 1}
    assert outcomes == {"answered": 6, "handed_off": 0, "taken_back": 0, "forwarded": 0}


async def always_revalidated(
    origin: Origin, tmp_path: Path, fast: bool
) -> tuple[list[Answer], list[str], dict[str, float]]:
    origin.put("/no-cache", OLD, headers={"Cache-Control": "public, no-cache"})
    origin.put("/max-age-0", OLD, headers={"Cache-Control": "public, max-age=0"})
    config = edge_config(origin, tmp_path, "always-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for path in ("/no-cache", "/max-age-0"):
            got.append(await ask(edge.port, "GET", path))
        before = fast_path_outcomes()
        for path in ("/no-cache", "/max-age-0"):
            for rng in ("", "bytes=100-199", ""):
                got.append(await ask(edge.port, "GET", path, rng))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    return got, logged(tmp_path / f"always-{fast}.log"), outcomes


async def test_an_entry_stale_again_after_its_304_is_answered_on_the_fast_path(origin: Origin, tmp_path: Path) -> None:
    fast, _, outcomes = await on_both_paths(always_revalidated, origin, tmp_path)
    assert [cache_status(a) for a in fast[2:]] == [b"edgecache; fwd=stale; fwd-status=304"] * 6
    assert [a.body for a in fast[2:]] == [OLD, OLD[100:200], OLD] * 2
    assert dict(origin.hits) == {"/no-cache": 4, "/max-age-0": 4}  # each request asks the origin: a 304
    assert outcomes == {"answered": 6, "handed_off": 0, "taken_back": 0, "forwarded": 0}


async def unknown_length(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
    """/unknown: a chunked answer, stale as it arrives; /refused: a 503; /cut: the connection cut, no answer."""
    if request.path == "/cut":
        assert request.transport is not None
        request.transport.close()
    if request.path in ("/refused", "/cut"):
        return web.Response(status=503, text="down\n")
    return await in_pieces(request, "public, max-age=0") if request.path == "/unknown" else None


async def ask_closing(port: int, path: str, rng: str = "") -> Answer:
    """`path` asked on a connection the request closes: the answer whatever its framing (a chunked body decoded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = f"Range: {rng}\r\n" if rng else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n{extra}\r\n".encode())
        head, _, body = (await reader.read(-1)).partition(b"\r\n\r\n")
    finally:
        writer.close()
    lines = head.split(b"\r\n")
    if b"Transfer-Encoding: chunked" in lines:
        decoded = b""
        while (size := int(body.split(b"\r\n", 1)[0], 16)) > 0:
            at = body.index(b"\r\n") + 2
            decoded, body = decoded + body[at : at + size], body[at + size + 2 :]
        body = decoded
    ages = [int(x[5:]) for x in lines if x.startswith(b"Age: ")]
    kept = b"\r\n".join(x for x in lines if not x.startswith((b"Date: ", b"Age: ")))
    return Answer(kept, body, ages[0] if ages else 0)


async def stale_on_arrival(
    origin: Origin, tmp_path: Path, fast: bool
) -> tuple[list[Answer], list[str], dict[str, float]]:
    """Answers already stale as they arrive (max-age=0): a first miss, a new version replacing the stale entry, of
    known and unknown length; and revalidations the origin fails (its 503, its connection cut) with no
    stale-if-error to let the stale entry stand in. Each asked twice."""
    origin.put("/new", OLD, etag='"v1"', headers={"Cache-Control": "public, max-age=0"})
    for path in ("/refused", "/cut"):
        origin.put(path, OLD, etag='"v1"', headers={"Cache-Control": "public, max-age=60"})
    origin.on_request = None
    config = edge_config(origin, tmp_path, "arrival-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for path in ("/refused", "/cut"):
            got.append(await ask_closing(edge.port, path))
            age(edge, path, 120)
        origin.on_request = unknown_length
        before = fast_path_outcomes()
        for path, rng in [("/new", ""), ("/new", "bytes=5-9"), ("/unknown", ""), ("/unknown", "")]:
            got.append(await ask_closing(edge.port, path, rng))
            await settle(edge)  # an answer of unknown length is stored as its fill ends: not joined after it
        origin.put("/new", NEW, etag='"v2"', headers={"Cache-Control": "public, max-age=0"})
        for path in ("/new", "/new", "/refused", "/refused", "/cut", "/cut"):
            got.append(await ask_closing(edge.port, path))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    return got, logged(tmp_path / f"arrival-{fast}.log"), outcomes


async def test_answers_stale_on_arrival_and_failed_revalidations_are_the_fast_paths(
    origin: Origin, tmp_path: Path
) -> None:
    fast, _, outcomes = await on_both_paths(stale_on_arrival, origin, tmp_path)
    got = fast[2:]
    assert [a.head.split(b"\r\n", 1)[0] for a in got] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 206 Partial Content"] + [
        b"HTTP/1.1 200 OK"
    ] * 4 + [b"HTTP/1.1 503 Service Unavailable"] * 2 + [b"HTTP/1.1 502 Bad Gateway"] * 2
    assert [a.body for a in got[:6]] == [OLD, OLD[5:10], b"first second third\n"] * 1 + [
        b"first second third\n",
        NEW,
        NEW,
    ]
    assert [cache_status(a) for a in got[:8]] == [
        b"edgecache; fwd=uri-miss; stored",
        b"edgecache; fwd=stale; fwd-status=304",
        b"edgecache; fwd=uri-miss; stored",
        b"edgecache; fwd=stale; stored",
        b"edgecache; fwd=stale; stored",
        b"edgecache; fwd=stale; fwd-status=304",
        b'edgecache; fwd=stale; detail="no-freshness"',  # passed through: why its fill's answer is not stored
        b'edgecache; fwd=stale; detail="no-freshness"',
    ]
    assert [a.body for a in got[6:8]] == [b"down\n"] * 2
    assert all(cache_status(a).startswith(b'edgecache; detail="origin failed: ') for a in got[8:])
    # A 503 is passed through (its revalidation asked for a run of slices, not the whole answer): asked again
    assert dict(origin.hits) == {"/new": 5, "/unknown": 2, "/refused": 5, "/cut": 5}
    assert outcomes == {"answered": 10, "handed_off": 0, "taken_back": 0, "forwarded": 0}


async def closing_window(
    origin: Origin, tmp_path: Path, fast: bool
) -> tuple[list[Answer], list[str], dict[str, float]]:
    """A stale entry whose stale-if-error window closes while the origin takes its time to fail its revalidation
    (asked 0.3 s before the window closes, a 503 0.6 s later): it stands in, judged when the revalidation starts."""

    async def slow_failure(request: web.BaseRequest, obj: object) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(status=503, text="down\n")

    origin.put("/closing", OLD, headers={"Cache-Control": "public, max-age=60, stale-if-error=10"})
    origin.on_request = None
    config = edge_config(origin, tmp_path, "closing-", fast)
    async with start_edge(config) as edge, asyncio.timeout(30):
        got = [await ask(edge.port, "GET", "/closing")]
        age(edge, "/closing", 69.7)
        origin.on_request = slow_failure
        before = fast_path_outcomes()
        got.append(await ask(edge.port, "GET", "/closing"))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    return got, logged(tmp_path / f"closing-{fast}.log"), outcomes


async def test_stale_if_error_is_judged_when_the_revalidation_starts(origin: Origin, tmp_path: Path) -> None:
    fast, _, outcomes = await on_both_paths(closing_window, origin, tmp_path)
    assert cache_status(fast[1]) == b'edgecache; hit; detail="stale-if-error"'
    assert fast[1].body == OLD
    assert outcomes == {"answered": 1, "handed_off": 0, "taken_back": 0, "forwarded": 0}


async def swr_on_arrival(
    origin: Origin, tmp_path: Path, fast: bool
) -> tuple[list[Answer], list[str], dict[str, float]]:
    """An answer stale as it arrives (Age past max-age) within its stale-while-revalidate window: asked twice, and
    the revalidations each started in the background waited for after each answer."""
    origin.put("/swr", SWR, headers={"Cache-Control": "public, max-age=1, stale-while-revalidate=60", "Age": "30"})
    origin.on_request = None
    config = edge_config(origin, tmp_path, "swr-", fast)
    config = replace(config, cache=replace(config.cache, slice_bytes=64 * 1024))  # 3 slices, as in a cluster test
    got: list[Answer] = []
    hits: list[int] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        before = fast_path_outcomes()
        for _ in range(2):
            got.append(await ask(edge.port, "GET", "/swr"))
            await asyncio.gather(*edge.node.engine._tasks)  # started before the answer went out, if at all
            hits.append(origin.hits["/swr"])
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    assert hits == [1, 2], (fast, hits)
    return got, logged(tmp_path / f"swr-{fast}.log"), outcomes


async def test_a_miss_stale_on_arrival_is_not_revalidated_at_once_on_the_fast_path(
    origin: Origin, tmp_path: Path
) -> None:
    """The miss's own answer, just sent by the origin, starts no revalidation (the full handler's serve_fill starts
    none); the next request, served stale, does. Before, the fast path's miss answered as a stale-while-revalidate
    hit and asked the origin again at once (once its fill had ended), two origin requests for one miss."""
    fast, _, outcomes = await on_both_paths(swr_on_arrival, origin, tmp_path)
    assert [cache_status(a) for a in fast] == [b"edgecache; fwd=uri-miss; stored", b'edgecache; hit; detail="stale"']
    assert [a.body for a in fast] == [SWR] * 2
    assert all(30 <= a.age < 40 for a in fast)
    assert outcomes["handed_off"] == 0
