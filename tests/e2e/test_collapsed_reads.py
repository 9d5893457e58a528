"""edgecache_collapsed_waits_total counts a request that reads slices from another request's fill in flight
(reading.read_slice) once, as the full handler and the fast path's cold miss count a request that joins: once per
request, not per slice it reads there, and never for the fill a request's own read started."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache import metrics
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
DATA = bytes(range(256)) * (8 * SLICE // 256)  # 8 slices
FIRST, LAST = 5 * SLICE + 10, 8 * SLICE - 1  # slices 5 to 7: one fill of three slices (cache.fill_slices is 4)


def collapsed() -> float:
    return metrics.COLLAPSED.wrapped._value.get()  # type: ignore[attr-defined, no-any-return]


async def until(condition: Callable[[], bool]) -> None:
    """Polled: what it waits for happens inside the node, with no event to wait on."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def readers(edge: Edge, index: int) -> int:
    """Requests reading the fill of slice `index` now (Fill.readers)."""
    return sum(f.readers for fills in edge.node.engine.fills._by_key.values() for f in fills if f.covers(index))


def get(edge: Edge, first: int, last: int | None) -> asyncio.Future[tuple[int, bytes]]:
    async def answer() -> tuple[int, bytes]:
        status, _, body = await edge.get("/c.bin", **({"Range": f"bytes={first}-{last}"} if last is not None else {}))
        return status, body

    return asyncio.ensure_future(answer())


async def held_after(request: web.BaseRequest, obj: Obj | None, release: asyncio.Event) -> web.StreamResponse:
    """The origin's 206 to the slices asked, as it sends them, its first 1,000 bytes sent, the rest once released."""
    assert obj is not None
    first, last = (int(n) for n in request.headers["Range"][6:].split("-"))
    fields = {"ETag": obj.etag or "", "Last-Modified": obj.last_modified or "", "Content-Type": obj.content_type}
    ranged = {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}
    resp = web.StreamResponse(status=206, headers={**obj.headers, **fields, **ranged})
    resp.content_length = last + 1 - first
    await resp.prepare(request)
    await resp.write(DATA[first : first + 1000])
    await release.wait()
    await resp.write(DATA[first + 1000 : last + 1])
    return resp


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_requests_that_read_another_requests_fill_count_once_each(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    origin.put("/c.bin", DATA)
    release = asyncio.Event()
    run = f"bytes={5 * SLICE}-{8 * SLICE - 1}"

    def hold_the_run(request: web.BaseRequest, obj: Obj | None) -> Awaitable[web.StreamResponse] | None:
        return held_after(request, obj, release) if request.headers.get("Range") == run else None

    origin.on_request = hold_the_run
    cfg = replace(make_config(tmp_path, [origin.url], slice_bytes=SLICE), fast_path=fast_path)
    async with start_edge(cfg) as edge:
        status, _, body = await edge.get("/c.bin", Range="bytes=0-99")  # stored: its length, and slice 0
        assert (status, body) == (206, DATA[:100])
        before = collapsed()
        try:
            async with asyncio.timeout(20):
                first = get(edge, FIRST, LAST)  # starts the fill of slices 5 to 7, and reads them as its own
                await until(lambda: readers(edge, 5) == 1)
                joined = [get(edge, FIRST, LAST), get(edge, FIRST, LAST)]  # each reads its 3 slices from that fill
                await until(lambda: readers(edge, 5) == 3)
        finally:
            release.set()
        answers = await asyncio.gather(first, *joined)
        assert answers == [(206, DATA[FIRST : LAST + 1])] * 3
        assert origin.range_hits("/c.bin")[1:] == [run]  # one origin request for the three
        assert collapsed() - before == 2  # once each joiner: not once a slice (6), not the first


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "full"])
async def test_a_miss_that_joined_counts_once_however_many_fills_it_reads(
    origin: Origin, tmp_path: Path, fast_path: bool
) -> None:
    """B, a cold miss of the whole object, joins A's fill of slice 0 (counted there: the handler's or the fast path's
    join), then reads slices 4 to 7 from C's fill, another request's origin fetch: still counted once."""
    origin.put("/c.bin", DATA)
    head, body = asyncio.Event(), asyncio.Event()
    run = f"bytes={4 * SLICE}-{8 * SLICE - 1}"

    async def hold(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if request.headers.get("Range") == f"bytes=0-{SLICE - 1}":
            await head.wait()  # then answered as ever
        return await held_after(request, obj, body) if request.headers.get("Range") == run else None

    origin.on_request = hold
    cfg = replace(make_config(tmp_path, [origin.url], slice_bytes=SLICE), fast_path=fast_path)
    async with start_edge(cfg) as edge:
        before, fills = collapsed(), edge.node.engine.fills
        try:
            async with asyncio.timeout(20):
                a = get(edge, 0, 99)  # its fill of slice 0 held before its head
                await origin.wait_for_requests(1)
                b = get(edge, 0, None)
                await until(lambda: any(len(f.expecting) == 2 for fs in fills._by_key.values() for f in fs))
                c = get(edge, 4 * SLICE, 8 * SLICE - 1)  # a cold miss too: its own fill of slices 4 to 7
                await until(lambda: readers(edge, 4) == 1)
                head.set()  # B reads slice 0, fetches 1 to 3 itself, and reads 4 to 7 from C's fill
                await until(lambda: readers(edge, 4) == 2)
        finally:
            head.set()
            body.set()
        answers = await asyncio.gather(a, b, c)
        assert answers == [(206, DATA[:100]), (200, DATA), (206, DATA[4 * SLICE :])]
        ranges = [f"bytes=0-{SLICE - 1}", run, f"bytes={SLICE}-{4 * SLICE - 1}"]
        assert sorted(origin.range_hits("/c.bin"), key=str) == sorted(ranges)
        assert collapsed() - before == 1  # B alone, once
