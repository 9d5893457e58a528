"""Purges here that keep overtaking a request's fills are not an origin that keeps changing (core.churn).

A range of slice 1 of a stored object whose slice 1 is not stored: its fill is a slice reader's, which nobody streams,
so a purge that overtakes it restarts the request (errors.Overtaken). The origin holds one version throughout; the
purges come from its request hook through the admin API, each followed by a request that stores the object again,
so the request's next look-up finds a copy and fills its slice 1 once more. Before, each such restart counted as a
new version at the origin: after two the request was relayed, said `detail="changing"` and counted as a miss of cause
`changing`, blaming an origin that had changed nothing (before the relay existed, b637755, three were the 502 "the
object kept changing" seen under a purge storm). Now a purge's restart is a try, not a change: after two, the third
fill is stored and answers; under purges without end, the relay says it was overtaken by one. The fast path counts
its tries as the full handler does (core.churn.Tries) and relays the request itself: none is handed to aiohttp's
server (issue 14), and both paths answer the same bytes, status and Cache-Status from the same three fills.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache import metrics
from tests.e2e.adminkit import AdminNode, admin_node, node_config
from tests.origin import Obj, Origin
from tests.wire import fast_path_outcomes, read_answer

SLICE = 16 * 1024
DATA = os.urandom(3 * SLICE + 17)
SLICE_1 = f"bytes={SLICE}-{2 * SLICE - 1}"  # the fill of slice 1, as a slice reader asks it


def misses(cause: str) -> float:
    return float(metrics.MISSES.labels("videos", cause).wrapped._value.get())


@asynccontextmanager
async def stored(origin: Origin, tmp_path: Path, fast: bool) -> AsyncIterator[AdminNode]:
    """A node with the admin API, slices of SLICE bytes, /p.bin's copy and its slice 0 stored."""
    origin.put("/p.bin", DATA)
    cfg = replace(node_config(origin, tmp_path / "c"), fast_path=fast)
    cfg = replace(cfg, cache=replace(cfg.cache, slice_bytes=SLICE))
    async with admin_node(cfg) as node:
        assert (await node.edge.get("/p.bin", Range="bytes=0-99"))[::2] == (206, DATA[:100])
        yield node


async def purge_then_store(node: AdminNode) -> None:
    """Purge /p.bin, then store its copy and slice 0 again with a request of its own."""
    status, answer = await node.call("POST", "/purge", json={"url": "http://video.test/p.bin"})
    assert (status, answer["confirmed"]) == (200, 1)
    assert (await node.edge.get("/p.bin", Range="bytes=0-99"))[::2] == (206, DATA[:100])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("purges", [2, 100], ids=["two", "endless"])
async def test_a_purge_storm_is_not_an_origin_that_keeps_changing(
    origin: Origin, tmp_path: Path, fast: bool, purges: int
) -> None:
    async with stored(origin, tmp_path, fast) as node:
        edge = node.edge
        done = [0]

        async def hook(request: web.BaseRequest, obj: Obj | None) -> None:
            if request.headers.get("Range") == SLICE_1 and done[0] < purges:
                done[0] += 1
                await purge_then_store(node)

        origin.on_request = hook
        before, changing, uncacheable = len(origin.seen), misses("changing"), misses("uncacheable")
        handed_off = fast_path_outcomes()["handed_off"]
        asked_for = f"bytes={SLICE}-{SLICE + 99}"
        status, headers, body = await edge.get("/p.bin", Range=asked_for)
        assert (status, headers["Content-Range"], body) == (
            206,
            f"bytes {SLICE}-{SLICE + 99}/{len(DATA)}",
            DATA[SLICE:][:100],
        )
        assert misses("changing") == changing  # the origin never changed
        # Both paths carry the request out themselves (issue 14): the fast path hands none to aiohttp's server.
        assert fast_path_outcomes()["handed_off"] == handed_off
        asked = [s.headers.get("Range") for s in origin.seen[before:]]
        refill = [SLICE_1, f"bytes=0-{SLICE - 1}"]  # a fill of slice 1, overtaken; the hook's request storing the copy
        if purges == 2:
            # The third fill of slice 1 comes after both purges, and is stored: the answer is from a fresh fill.
            assert headers["Cache-Status"] == "edgecache; fwd=partial"
            assert (asked, done[0]) == ([*refill, *refill, SLICE_1], 2)
            assert (await edge.get("/p.bin", Range=asked_for))[1]["Cache-Status"] == "edgecache; hit"
        else:
            # Every fill of slice 1 overtaken, three tries on either path (core.churn): the client's range is relayed
            # from one origin request, said and counted as an answer a purge overtook (as a miss's own fill a purge
            # overtakes is), never "changing".
            assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="invalidated"'
            assert (asked, done[0]) == ([*refill * 3, asked_for], 3)
            assert misses("uncacheable") == uncacheable + 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_same_request_again_on_a_connection_has_tries_of_its_own(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    # The fast path counts a head's tries on its connection: an identical head sent next on that keep-alive
    # connection is another request, whose tries begin afresh. Were the first's counted on, the second would be out
    # of fills at its second purge, and relayed as "invalidated" (or, with one try a head, handed off).
    async with stored(origin, tmp_path, fast) as node:
        edge = node.edge
        done, limit = [0], [1]

        async def hook(request: web.BaseRequest, obj: Obj | None) -> None:
            if request.headers.get("Range") == SLICE_1 and done[0] < limit[0]:
                done[0] += 1
                await purge_then_store(node)

        origin.on_request = hook
        before, handed_off = len(origin.seen), fast_path_outcomes()["handed_off"]
        head = f"GET /p.bin HTTP/1.1\r\nHost: video.test\r\nRange: bytes={SLICE}-{SLICE + 99}\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(head)
            first = await read_answer(reader)
            await purge_then_store(node)  # slice 1 not stored again: the next request fills it
            limit[0] = 3  # two purges overtake its fills
            writer.write(head)
            second = await read_answer(reader)
        finally:
            writer.close()
        for status, fields, body in (first, second):
            assert (status, fields[b"cache-status"], body) == (206, b"edgecache; fwd=partial", DATA[SLICE:][:100])
        refill = [SLICE_1, f"bytes=0-{SLICE - 1}"]
        asked = [s.headers.get("Range") for s in origin.seen[before:]]
        assert (asked, done[0]) == ([*refill, SLICE_1, refill[1], *refill * 2, SLICE_1], 3)
        assert fast_path_outcomes()["handed_off"] == handed_off
