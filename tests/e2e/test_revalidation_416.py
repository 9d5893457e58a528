"""A revalidation whose slice range the origin refuses with a 416 (RangeMismatch while validating): the stale entry is
neither confirmed nor replaced, so the request is passed through, a MISS whose cause is the expired entry, as the
full handler passes it (EdgeHandler._head_of). It is the fast path's too (issue 14): before, the fast path handed
each such request to aiohttp, 52 of the 66 hand-offs of the e2e fuzz's modes `one` and `two` (40 s each, seed 50),
whose origin refuses the range of a version it has replaced by a shorter one. A 416 that tells a length the
client's own range is past gets the node's 416 (proxy.pastend); one that tells none, or a length the client's range
fits, is such a pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.conftest import start_edge
from tests.e2e.test_body_shapes import settle
from tests.e2e.test_revalidate_fast import NEW, OLD, Answer, age, ask, cache_status, edge_config, logged, on_both_paths
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes

CASES = [  # (method, path, Range, what the origin's 416 to the revalidation tells)
    ("GET", "/untold", "", ""),
    ("GET", "/untold-range", "bytes=100-199", ""),
    ("HEAD", "/untold-head", "", ""),
    ("GET", "/told-fits", "bytes=100-199", f"bytes */{len(OLD)}"),
]


def outcomes_and_causes() -> dict[str, float]:
    causes = {c: sample_value("edgecache_misses_total", {"site": "videos", "cause": c}) or 0.0 for c in CAUSES}
    return fast_path_outcomes() | causes


CAUSES = ("cold", "expired")


def refusing(request: web.BaseRequest, obj: object) -> web.Response | None:
    """The origin once the entries are stale: each conditional request (the revalidation's) refused with a 416 that
    tells no length, or one the client's range fits; its other requests (the pass-through's) answered."""
    if "If-None-Match" not in request.headers:
        return None
    told = next(t for _, path, _, t in CASES if path == request.path)
    return web.Response(status=416, headers={"Content-Range": told} if told else {})


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[Answer], list[str], dict[str, float]]:
    """Each case: filled, aged past its max-age, the origin's version replaced, then asked twice (passed each time:
    the stale entry is still all that is stored)."""
    for _, path, _, _ in CASES:
        origin.put(path, OLD, headers={"Cache-Control": "public, max-age=60"})
    origin.on_request = None
    config = edge_config(origin, tmp_path, "r416-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for method, path, rng, _ in CASES:
            await ask(edge.port, method, path, rng)
        await settle(edge)  # a HEAD's fill of the whole object may outlive its answer: aged while it ran, it was joined
        for _, path, _, _ in CASES:
            age(edge, path, 120)
            origin.put(path, NEW, etag='"v2"', headers={"Cache-Control": "public, max-age=60"})
        origin.on_request = refusing
        before = outcomes_and_causes()
        for _ in range(2):
            for method, path, rng, _ in CASES:
                got.append(await ask(edge.port, method, path, rng))
        outcomes = {k: v - before[k] for k, v in outcomes_and_causes().items()}
    return got, logged(tmp_path / f"r416-{fast}.log"), outcomes


async def test_a_revalidation_the_origin_refuses_with_a_416_is_passed_through_on_the_fast_path(
    origin: Origin, tmp_path: Path
) -> None:
    got, log, outcomes = await on_both_paths(run, origin, tmp_path)
    heads = [a.head.split(b"\r\n", 1)[0] for a in got]
    assert (
        heads
        == [b"HTTP/1.1 200 OK", b"HTTP/1.1 206 Partial Content", b"HTTP/1.1 200 OK", b"HTTP/1.1 206 Partial Content"]
        * 2
    )
    assert [a.body for a in got] == [NEW, NEW[100:200], b"", NEW[100:200]] * 2  # the origin's, passed
    assert all(b'\r\nETag: "v2"\r\n' in a.head and cache_status(a) == b"edgecache; fwd=uri-miss" for a in got)
    assert [line.split()[2:] for line in log[len(CASES) :]] == [
        ["200", "miss", str(len(NEW)), "origin"],
        ["206", "miss", "100", "origin"],
        ["200", "miss", "0", "origin"],
        ["206", "miss", "100", "origin"],
    ] * 2
    assert origin.hits == {path: 1 + 2 * 2 for _, path, _, _ in CASES}  # the fill, then a refused try and a pass
    assert (outcomes["answered"], outcomes["handed_off"]) == (2 * len(CASES), 0)
    assert (outcomes["expired"], outcomes["cold"]) == (
        2 * len(CASES),
        0,
    )  # the stale entry's miss, as the full handler's
