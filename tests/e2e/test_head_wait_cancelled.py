"""Every reader of a fill awaits the one head its origin answer brings (Fill.head). A reader cancelled while it
waits for that head (a client's timeout, a TaskGroup's sibling failing) must take only itself away: awaited
directly, the shared future was cancelled with it, and every other reader of the fill failed with it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core.entry import ObjectMeta
from edgecache.proxy import reading
from edgecache.proxy.fill import Fill
from tests.conftest import make_config, start_edge
from tests.e2e.test_released_copy import fills_started
from tests.origin import Obj, Origin

SLICE = 64 * 1024
BODY = os.urandom(3 * SLICE)
RUN = f"bytes={SLICE}-{3 * SLICE - 1}"  # slices 1 and 2: one fill (cache.fill_slices is 4)


async def test_a_reader_cancelled_while_it_waits_for_the_head_leaves_the_others_every_byte(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starts the fill of slices 1 and 2, B joins it; the origin holds its answer until both wait for its head.
    A is cancelled there. B gets every byte, the fill stores both slices, and the origin is asked once for them.
    Before (fill.head awaited as is), B's read raised CancelledError and the slices were fetched again."""
    origin.put("/h.bin", BODY)
    answer = asyncio.Event()

    async def hold_the_run(request: web.BaseRequest, _obj: Obj | None) -> None:
        if request.headers.get("Range") == RUN:
            await answer.wait()  # then answered as ever

    origin.on_request = hold_the_run
    cfg = make_config(tmp_path, [origin.url], slice_bytes=SLICE)
    async with start_edge(cfg) as edge:
        engine = edge.node.engine
        asked = fills_started(engine, monkeypatch)
        status, _, body = await edge.get("/h.bin", Range="bytes=0-99")  # the copy's metadata and slice 0
        assert (status, body) == (206, BODY[:100])
        (req,) = asked
        meta = engine.store.peek_meta(req.entry_key)
        assert isinstance(meta, ObjectMeta)
        waiting = asyncio.Condition()
        at_head: list[Fill] = []
        from_fill = reading._from_fill

        async def counted(fill: Fill, m: ObjectMeta, index: int, lo: int, hi: int) -> AsyncIterator[bytes | memoryview]:
            async with waiting:  # the reader goes on to await the fill's head without another await between
                at_head.append(fill)
                waiting.notify_all()
            async for chunk in from_fill(fill, m, index, lo, hi):
                yield chunk

        monkeypatch.setattr(reading, "_from_fill", counted)

        async def read() -> bytes:
            return b"".join([bytes(c) async for c in reading.read_range(engine, req, meta, SLICE, 3 * SLICE - 1)])

        try:
            async with asyncio.timeout(20):
                a = asyncio.ensure_future(read())
                await origin.wait_for_requests(2)
                b = asyncio.ensure_future(read())
                async with waiting:
                    await waiting.wait_for(lambda: len(at_head) == 2)
                assert at_head[0] is at_head[1]  # B joined A's fill
                a.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await a
        finally:
            answer.set()
        async with asyncio.timeout(20):
            got = await b
            await asyncio.gather(*engine._tasks)
        assert got == BODY[SLICE:]
        assert origin.range_hits("/h.bin") == [f"bytes=0-{SLICE - 1}", RUN]
        for index in (1, 2):  # stored by the fill A's cancel left running
            stored = await engine.store.slice_from_disk(req.entry_key, meta, index)
            assert stored == BODY[index * SLICE : (index + 1) * SLICE]
        assert not at_head[0].head.cancelled()
