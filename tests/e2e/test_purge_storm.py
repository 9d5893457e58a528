"""Purges here that keep overtaking a request's fills are not an origin that keeps changing (core.churn).

A range of slice 1 of a stored object whose slice 1 is not stored: its fill is a slice reader's, which nobody streams,
so a purge that overtakes it restarts the request (errors.Overtaken). The origin holds one version throughout; the
purges come from its request hook through the admin API, each followed by a request that stores the object again,
so the request's next look-up finds a copy and fills its slice 1 once more. Before, each such restart counted as a
new version at the origin: after two the request was relayed, said `detail="changing"` and counted as a miss of cause
`changing`, blaming an origin that had changed nothing (before the relay existed, b637755, three were the 502 "the
object kept changing" seen under a purge storm). Now a purge's restart is a try, not a change: after two, the third
fill is stored and answers; under purges without end, the relay says it was overtaken by one.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache import metrics
from tests.e2e.adminkit import admin_node, node_config
from tests.origin import Obj, Origin

SLICE = 16 * 1024
DATA = os.urandom(3 * SLICE + 17)
SLICE_1 = f"bytes={SLICE}-{2 * SLICE - 1}"  # the fill of slice 1, as a slice reader asks it


def changing_misses() -> float:
    return float(metrics.MISSES.labels("videos", "changing").wrapped._value.get())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("purges", [2, 100], ids=["two", "endless"])
async def test_a_purge_storm_is_not_an_origin_that_keeps_changing(
    origin: Origin, tmp_path: Path, fast: bool, purges: int
) -> None:
    origin.put("/p.bin", DATA)
    cfg = replace(node_config(origin, tmp_path / "c"), fast_path=fast)
    cfg = replace(cfg, cache=replace(cfg.cache, slice_bytes=SLICE))
    async with admin_node(cfg) as node:
        edge = node.edge
        assert (await edge.get("/p.bin", Range="bytes=0-99"))[::2] == (206, DATA[:100])  # the copy, and slice 0
        done = [0]

        async def purge_then_store(request: web.BaseRequest, obj: Obj | None) -> None:
            if request.headers.get("Range") == SLICE_1 and done[0] < purges:
                done[0] += 1
                status, answer = await node.call("POST", "/purge", json={"url": "http://video.test/p.bin"})
                assert (status, answer["confirmed"]) == (200, 1)
                assert (await edge.get("/p.bin", Range="bytes=0-99"))[::2] == (206, DATA[:100])  # stored again

        origin.on_request = purge_then_store
        before, changing = len(origin.seen), changing_misses()
        asked_for = f"bytes={SLICE}-{SLICE + 99}"
        status, headers, body = await edge.get("/p.bin", Range=asked_for)
        assert (status, headers["Content-Range"], body) == (
            206,
            f"bytes {SLICE}-{SLICE + 99}/{len(DATA)}",
            DATA[SLICE:][:100],
        )
        assert changing_misses() == changing  # the origin never changed
        asked = [s.headers.get("Range") for s in origin.seen[before:]]
        refill = [SLICE_1, f"bytes=0-{SLICE - 1}"]  # a fill of slice 1, overtaken; the hook's request storing the copy
        if purges == 2:
            # The third fill of slice 1 comes after both purges, and is stored: the answer is from a fresh fill.
            assert headers["Cache-Status"] == "edgecache; fwd=partial"
            assert (asked, done[0]) == ([*refill, *refill, SLICE_1], 2)
            assert (await edge.get("/p.bin", Range=asked_for))[1]["Cache-Status"] == "edgecache; hit"
        else:
            # Every fill of slice 1 overtaken, the full handler's three (after the fast path's two, which decides a
            # request again once, then hands it over): the client's range is relayed from one origin request, said
            # as an answer a purge overtook (as a miss's own fill a purge overtakes says), never "changing".
            fills = 5 if fast else 3
            assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="invalidated"'
            assert (asked, done[0]) == ([*refill * fills, asked_for], fills)
