"""proxy.fill: a producer paced by its streams (a body not stored: Fill.kept False) goes on once they have gone."""

from __future__ import annotations

import asyncio

from edgecache.core.entry import ObjectMeta
from edgecache.proxy.fill import Fill, FillHead

SIZE = 1024


def _stored(index: int, data: bytes) -> None:
    del index, data


async def test_a_producer_paced_by_its_one_stream_goes_on_once_that_stream_is_closed() -> None:
    """stream()'s end woke the producer while its inner generator, which the loop closes later, still held the
    stream's place in the fill: the producer, waiting for room that place held, was never woken again."""
    fill = Fill("k", 0, None, SIZE)
    meta = ObjectMeta(200, (), -1, "v", False, 0.0, 0.0, SIZE)
    fill.set_head(FillHead(200, meta, 0, None, store=True, shared=True))  # a body of unknown length
    fill.kept, fill.window = False, 0  # past the bound: what every stream has read goes; 2 slices held at most
    stream = fill.stream(fill.expecting.expect())  # counted from now: slice 0 is kept for it
    fill.feed(b"a" * SIZE, _stored)
    assert bytes(await anext(stream)) == b"a" * SIZE
    fill.feed(b"b" * SIZE, _stored)
    room = asyncio.ensure_future(fill.room())  # the stream has not moved on from slice 0: no room
    await stream.aclose()  # its client has gone
    async with asyncio.timeout(2):
        await room
    assert fill._streams == {}
