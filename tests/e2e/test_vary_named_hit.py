"""A miss decided again under the Vary its fill's answer named (coldmiss.AGAIN) is looked up under that Vary on the
fast path, as its fill would be started under it (lookup.find_cold) and as the full handler looks again
(EdgeHandler._cached_loop): a variant stored under that Vary earlier, still fresh, answers it. Before, the fast path
looked the request up under the object's record alone, which (its last stored answer naming no Vary) held only a
stale entry, while find_cold, under the Vary, found a fresh one it does not serve: the connection went to aiohttp.
All 23 of the hand-offs of one 40 s run of the e2e fuzz's mode `one` (seed 50), whose origin turns Vary on and off."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.conftest import start_edge
from tests.e2e.test_revalidate_fast import Answer, age, ask, cache_status, edge_config, logged, on_both_paths
from tests.origin import Origin
from tests.wire import fast_path_outcomes

PHASES = {  # what the origin answers in each phase: (body, Vary, Cache-Control, ETag)
    "varied": ("A for {device}", "X-Device", "public, max-age=600", '"a"'),
    "plain": ("B", "", "public, max-age=60", '"b"'),
    "private": ("C for {device}", "X-Device", "private", '"c"'),
}


def answering(phase: list[str], seen: list[tuple[str | None, str | None]]) -> object:
    def hook(request: web.BaseRequest, obj: object) -> web.Response:
        device = request.headers.get("X-Device")
        seen.append((device, request.headers.get("If-None-Match")))
        body, vary, cache_control, etag = PHASES[phase[0]]
        headers = {"Cache-Control": cache_control, "ETag": etag, "Content-Type": "text/plain"}
        if vary:
            headers["Vary"] = vary
        return web.Response(body=body.format(device=device).encode() * 100, headers=headers)

    return hook


async def run(origin: Origin, tmp_path: Path, fast: bool) -> tuple[list[Answer], list[str], dict[str, float]]:
    """The phone's variant stored under Vary: X-Device; then an answer naming no Vary stored (the record names none)
    and aged past its max-age; then the phone asks twice while the origin answers privately, naming the Vary again."""
    phase, seen = ["varied"], []
    origin.on_request = answering(phase, seen)
    config = edge_config(origin, tmp_path, "named-", fast)
    got: list[Answer] = []
    async with start_edge(config) as edge, asyncio.timeout(30):
        got.append(await ask(edge.port, "GET", "/x", more="X-Device: phone\r\n"))
        phase[0] = "plain"
        got.append(await ask(edge.port, "GET", "/x", more="X-Device: tv\r\n"))
        age(edge, "/x", 120)
        phase[0] = "private"
        before = fast_path_outcomes()
        for _ in range(2):
            got.append(await ask(edge.port, "GET", "/x", more="X-Device: phone\r\n"))
        outcomes = {k: v - before[k] for k, v in fast_path_outcomes().items()}
    # The first fill knew no Vary; the stale plain entry is revalidated as the record says (no X-Device, its ETag)
    assert seen == [(None, None), ("phone", None), ("tv", None), (None, '"b"'), (None, '"b"')]
    return got, logged(tmp_path / f"named-{fast}.log"), outcomes


async def test_a_miss_decided_again_under_the_vary_its_fill_named_finds_that_variant(
    origin: Origin, tmp_path: Path
) -> None:
    got, log, outcomes = await on_both_paths(run, origin, tmp_path)
    assert [a.body for a in got] == [b"A for phone" * 100, b"B" * 100, b"A for phone" * 100, b"A for phone" * 100]
    assert [cache_status(a) for a in got[2:]] == [b"edgecache; hit"] * 2
    assert log == ["GET /x 200 miss 1100 origin", "GET /x 200 miss 100 origin"] + ["GET /x 200 hit 1100 cache"] * 2
    assert (outcomes["answered"], outcomes["handed_off"]) == (2, 0)
