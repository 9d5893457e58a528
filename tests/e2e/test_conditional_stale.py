"""A conditional request (If-None-Match, If-Modified-Since) for a stored entry that must be revalidated first is the
fast path's too (issue 14): it starts the revalidation with the entry's own validators, as for any stale entry, and
once the origin's head is in judges the viewer's conditions against what it now holds, as the full handler does: a
304 when they match the entry the origin confirmed (or its new version), the answer in full when they do not. The
viewer's validators never reach the origin (the fill asks with the stored entry's). Before, every such request was
handed to aiohttp: 150 of 4,687 requests of the e2e fuzz's mode `one` (`loadtest.fuzz_e2e`, seed 62)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import start_edge
from tests.e2e.test_revalidate_fast import NEW, OLD, Answer, age, ask, cache_status, edge_config, logged, on_both_paths
from tests.origin import Origin
from tests.wire import fast_path_outcomes

STORED_LM = "Sat, 01 Nov 2025 00:00:00 GMT"  # tests.origin.Obj's Last-Modified
CASES = [  # (method, path, Range, the viewer's conditions, what the origin has when asked again)
    ("GET", "/inm-same", "", 'If-None-Match: "v1"', "same"),
    ("GET", "/inm-other", "", 'If-None-Match: "v0"', "same"),
    ("HEAD", "/inm-head", "", 'If-None-Match: "v1"', "same"),
    ("GET", "/ims-same", "", f"If-Modified-Since: {STORED_LM}", "same"),
    ("GET", "/inm-range", "bytes=100-199", 'If-None-Match: "v1"', "same"),
    ("GET", "/inm-changed", "", 'If-None-Match: "v1"', "changed"),
    ("GET", "/inm-new", "", 'If-None-Match: "v2"', "changed"),
]


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[Answer], list[str], dict[str, float]]:
    """Each case: filled, aged past its max-age, then asked with the viewer's conditions (revalidated)."""
    for _, path, _, _, _ in CASES:
        origin.put(path, OLD, headers={"Cache-Control": "public, max-age=60"})
    config = edge_config(origin, tmp_path, "cond-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        for _, path, _, _, _ in CASES:
            await ask(edge.port, "GET", path)
        for _, path, _, _, then in CASES:
            age(edge, path, 120)
            if then == "changed":
                origin.put(path, NEW, etag='"v2"', headers={"Cache-Control": "public, max-age=60"})
        before, seen = fast_path_outcomes(), len(origin.seen)
        for method, path, rng, conditions, _ in CASES:
            got.append(await ask(edge.port, method, path, rng, conditions + "\r\n"))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
        asked = [(s.path, s.headers.get("If-None-Match"), s.headers.get("If-Modified-Since")) for s in origin.seen]
    conditional = [x for x in asked[seen:] if x[1] or x[2]]  # a new version's next slices are asked unconditionally
    assert conditional == [(path, '"v1"', STORED_LM) for _, path, _, _, _ in CASES]  # the entry's, not the viewer's
    return got, logged(tmp_path / f"cond-{fast}.log"), outcomes


async def test_a_conditional_request_for_a_stale_entry_is_revalidated_on_the_fast_path(
    origin: Origin, tmp_path: Path
) -> None:
    got, log, outcomes = await on_both_paths(run, origin, tmp_path)
    assert [a.head.split(b"\r\n", 1)[0] for a in got] == [
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 304 Not Modified",
    ]
    assert [a.body for a in got] == [b"", OLD, b"", b"", b"", NEW, b""]
    assert [cache_status(a) for a in got] == [b"edgecache; fwd=stale; fwd-status=304"] * 5 + [
        b"edgecache; fwd=stale; stored"
    ] * 2
    assert [line.split()[2:4] for line in log[len(CASES) :]] == [
        ["304", "revalidated"],
        ["200", "revalidated"],
        ["304", "revalidated"],
        ["304", "revalidated"],
        ["304", "revalidated"],
        ["200", "expired"],
        ["304", "expired"],
    ]
    assert (outcomes["answered"], outcomes["handed_off"]) == (len(CASES), 0)
