"""A purge that comes while a fill is at the origin: the fill's answer may not be stored (it carries the bytes the
purge was for), and the requests reading it start again as misses instead of failing."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from tests.e2e.adminkit import admin_node, node_config
from tests.origin import Origin

SLICE = 64 * 1024
V1 = os.urandom(3 * SLICE + 17)
V2 = os.urandom(3 * SLICE + 17)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_slice_fill_a_purge_overtakes_is_fetched_again_not_a_502(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Slice 1 of a stored object is at the origin when its URL is purged. That fill's answer may not be stored,
    and nobody streams a slice fill: both of its readers got 502 ("the answer cannot be stored and nobody streams
    it"). Found by fuzzing purges among ranged requests."""
    origin.put("/p.bin", V1)
    cfg = replace(node_config(origin, tmp_path / "c"), fast_path=fast)
    cfg = replace(cfg, cache=replace(cfg.cache, slice_bytes=SLICE))
    async with admin_node(cfg) as node:
        edge = node.edge
        status, _, body = await edge.get("/p.bin", Range="bytes=0-99")  # slice 0 and the object's metadata
        assert (status, body) == (206, V1[:100])
        origin.gate = asyncio.Event()  # the origin holds its answers
        asked = f"bytes={SLICE}-{SLICE + 99}"
        first = asyncio.ensure_future(edge.get("/p.bin", Range=asked))
        await origin.wait_for_requests(2)  # slice 1's fill is at the origin
        second = asyncio.ensure_future(edge.get("/p.bin", Range=asked))
        origin.put("/p.bin", V2, etag='"v2"')
        status, answer = await node.call("POST", "/purge", json={"url": "http://video.test/p.bin"})
        assert (status, answer["confirmed"]) == (200, 1)
        origin.gate.set()
        for answered in await asyncio.gather(first, second):
            status, headers, body = answered
            assert (status, headers.get("ETag"), headers.get("Content-Range")) == (
                206,
                '"v2"',
                f"bytes {SLICE}-{SLICE + 99}/{len(V2)}",
            )
            assert body == V2[SLICE : SLICE + 100]
        # The second request joined slice 1's fill (then both start again on one new fill), or it came after the
        # purge and began one of its own, which the first's new start may miss (one more fetch: a collapse gap, left).
        # Run alone on a quiet machine the second way came in 2-3 runs of 60, before this session's changes too.
        hits = origin.range_hits("/p.bin")
        assert hits[:3] == ["bytes=0-65535", "bytes=65536-131071", "bytes=65536-131071"]
        assert hits[3:] in ([], ["bytes=65536-131071"])
