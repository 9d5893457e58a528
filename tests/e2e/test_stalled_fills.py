"""An origin that sends its head and then not one byte of the body fails the fill after `origin.read_timeout`: every
request that reads that fill gets the one 504, and the origin is asked once per fill. A request that joined the fill
is not answered by a fill of its own (one more origin request, one more timeout for its client), and neither is a
request of the head kept meanwhile whose slice fill fails the same way: as nginx, Varnish and ATS, a failed fetch is
not retried for each of its waiters. The fast path and the full handler alike."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin

LENGTH = 1000
SLICE = "bytes=0-1048575"  # the slice fill of the kept head (1 MiB slices)


async def until_in_flight(edge: Edge, n: int) -> None:
    """Polled: the node counts the requests waiting for a fill's head, with no event to wait on."""
    while edge.node.shared.in_flight < n:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_body_stalled_past_the_read_timeout_costs_the_origin_one_request_per_fill(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    clients = 4
    hold = asyncio.Event()
    edges: list[Edge] = []

    async def stall(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        if origin.hits["/s"] == 1:  # the cold miss's head waits until every client waits for it
            await until_in_flight(edges[0], clients)
        fields = {"Cache-Control": "public, max-age=3600", "ETag": '"s1"'}
        status = 200
        if request.headers.get("Range") is not None:
            status, fields["Content-Range"] = 206, f"bytes 0-{LENGTH - 1}/{LENGTH}"
        resp = web.StreamResponse(status=status, headers=fields)
        resp.content_length = LENGTH
        await resp.prepare(request)
        await hold.wait()  # not one byte of the body
        return resp

    origin.on_request = stall
    config = make_config(tmp_path / "c", [origin.url])
    config = replace(config, origin=replace(config.origin, read_timeout=0.5), fast_path=fast)
    try:
        async with start_edge(config) as edge, asyncio.timeout(30):
            edges.append(edge)
            together = await asyncio.gather(*(edge.get("/s") for _ in range(clients)))
            assert [status for status, _, _ in together] == [504] * clients
            assert all(body.startswith(b"origin failed: ") for _, _, body in together)
            assert origin.range_hits("/s") == [None]  # one fill for all four
            for n in (1, 2):  # the kept head's slice fill fails the same way: one request each, no second fill
                status, _, body = await edge.get("/s")
                assert (status, body[:15]) == (504, b"origin failed: ")
                assert origin.range_hits("/s") == [None] + [SLICE] * n
    finally:
        hold.set()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_multipart_range_whose_slice_fill_stalls_is_one_504_from_one_origin_request(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """The kept head of an object whose body stalled, asked for two ranges: the fill of its slice stalls too. The
    answer is the 504 (never a 206 head cut before its first part), and the origin is asked once for it."""
    hold = asyncio.Event()

    async def stall(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        fields = {"Cache-Control": "public, max-age=3600", "ETag": '"s1"'}
        status = 200
        if request.headers.get("Range") is not None:
            status, fields["Content-Range"] = 206, f"bytes 0-{LENGTH - 1}/{LENGTH}"
        resp = web.StreamResponse(status=status, headers=fields)
        resp.content_length = LENGTH
        await resp.prepare(request)
        await hold.wait()  # not one byte of the body
        return resp

    origin.on_request = stall
    config = make_config(tmp_path / "c", [origin.url])
    config = replace(config, origin=replace(config.origin, read_timeout=0.5), fast_path=fast)
    try:
        async with start_edge(config) as edge, asyncio.timeout(30):
            status, _, _ = await edge.get("/s")  # the head is kept, the body stalls
            assert (status, origin.range_hits("/s")) == (504, [None])
            for n in (1, 2):
                status, _, body = await edge.get("/s", Range="bytes=0-9,20-29")
                assert (status, body[:15]) == (504, b"origin failed: ")
                assert origin.range_hits("/s") == [None] + [SLICE] * n
    finally:
        hold.set()
