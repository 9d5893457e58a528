"""A reader of a slice whose fill let it go (Released) reads it where that fill stored it: under the fill's own
entry key, which may differ from the reader's. The e2e fuzz (mode excl) answered 502 "slice N could not be read"
one to seven times a 45 s run: a reader keyed without a purge scope its fills' keys had (the key of a head from
before a site purge, the scope of a lookup after it) looked for each released slice under its own key, found
nothing, fetched the slice again, three times, and gave up, while memory held all three copies of it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.cluster.purgesync import apply_entry
from edgecache.core.entry import ObjectMeta
from edgecache.core.purge import Entry
from edgecache.proxy import reading
from edgecache.proxy.engine import Engine
from edgecache.proxy.fill import Fill
from edgecache.proxy.fillrequest import FillRequest
from tests.e2e.test_exclusive_tiers import SLICE, exclusive_edge, settled
from tests.origin import Origin


def fills_started(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[FillRequest]:
    """The request of each fill `engine` starts from now on, in order (its start_fill, spied on)."""
    asked: list[FillRequest] = []
    start_fill = engine.start_fill

    def recorded(req: FillRequest, first: int, last: int | None, *args: object, **kw: bool) -> Fill:
        asked.append(req)
        return start_fill(req, first, last, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "start_fill", recorded)
    return asked


BODY = os.urandom(3 * SLICE)


async def test_a_slice_a_fill_let_go_is_read_under_the_fills_key_not_fetched_again(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with exclusive_edge(origin, tmp_path, False) as edge:
        engine, store = edge.node.engine, edge.node.store
        origin.put("/r", BODY)
        asked = fills_started(engine, monkeypatch)
        status, _, body = await edge.get("/r", Range="bytes=0-99")  # the copy's metadata and slice 0 alone
        assert (status, body) == (206, BODY[:100])
        await settled(edge)
        (req,) = asked
        meta = store.peek_meta(req.entry_key)
        assert isinstance(meta, ObjectMeta)
        entry = Entry("test~1", 1, "site", "videos", "", "")
        assert await apply_entry(store, edge.node.config.sites, entry, 0.0, numbered=False)
        scope = store.purges.lookup("videos", "video.test", "/r")[0]
        assert scope
        # Keyed as before the purge, scoped as after it: the fills it starts store their slices under the new key.
        reader = replace(req, scope=scope)
        monkeypatch.setattr(reading, "_from_fill", late_reader(engine))
        got = b"".join([bytes(c) async for c in reading.read_slice(engine, reader, meta, 1, 0, 100, 1)])
        assert got == BODY[SLICE : SLICE + 100]
        assert origin.range_hits("/r") == [f"bytes=0-{SLICE - 1}", f"bytes={SLICE}-{2 * SLICE - 1}"]


def late_reader(engine: Engine) -> Callable[..., AsyncIterator[bytes | memoryview]]:
    """A reader that comes to a fill only once it has ended, its slices stored and let go (the fuzz's loaded loop)."""
    from_fill = reading._from_fill

    async def late(fill: Fill, meta: ObjectMeta, index: int, lo: int, hi: int) -> AsyncIterator[bytes | memoryview]:
        await asyncio.gather(*engine._tasks)
        async for chunk in from_fill(fill, meta, index, lo, hi):
            yield chunk

    return late
