"""A single range cut from the whole object's answer (decide.Decider._cut) names the slices it holds from the prefix
its Cutter worked out once (heldslices.slices_of), not from its hit's copy each time: the same slices held_slices()
names for that hit, in one slice, across two, in the short last one, and past the HELD an answer holds before it
streams; and the same bytes on the wire."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from edgecache.proxy.heldslices import HELD, held_slices
from edgecache.proxy.prepared import Prepared
from edgecache.storage.slicenames import slice_name
from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.wire import read_answer

SLICE = 4096
LENGTH = 20 * SLICE + 123  # 21 slices, the last one 123 bytes
BODY = bytes(i * 7 % 251 for i in range(LENGTH))
RANGES = [
    (0, 0),
    (10, SLICE - 1),  # one slice, to its last byte
    (SLICE - 1, SLICE),  # across a boundary
    (3 * SLICE + 5, 5 * SLICE + 7),  # three slices
    (20 * SLICE, LENGTH - 1),  # the short last slice
    (19 * SLICE + 9, LENGTH + 500),  # across into it, the range past the end cut to the object's
    (100, 100 + (HELD + 3) * SLICE),  # more slices than an answer holds before it streams
    (0, LENGTH - 1),
]


def _expected(cut: Prepared, first: int, last: int) -> tuple[tuple[str, int, int], ...]:
    """(name, first byte, end) of each slice the answer holds, worked out here from the slice names' rule."""
    key, version = cut.hit.req.entry_key, cut.hit.meta.slice_version
    out = []
    for index in range(first // SLICE, last // SLICE + 1)[: HELD + 1]:
        start = index * SLICE
        end = min(start + SLICE, LENGTH)
        out.append((slice_name(key, version, index), max(first, start) - start, min(last + 1, end) - start))
    return tuple(out)


def _head(first: int, last: int) -> bytes:
    return f"GET /v HTTP/1.1\r\nHost: video.test\r\nRange: bytes={first}-{last}\r\n\r\n".encode()


async def test_a_cut_range_holds_the_slices_its_hit_names_and_answers_exact_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("/v", BODY)
    config = replace(make_config(tmp_path / "c", [origin.url], slice_bytes=SLICE), fast_path=True)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        decider = edge.fast.decider
        assert (await edge.get("/v"))[2] == BODY
        assert (await edge.get("/v"))[2] == BODY  # a hit: the whole answer single ranges are cut from
        for first, last in RANGES:
            cut = decider.answer(_head(first, last), "127.0.0.1")
            assert isinstance(cut, Prepared)
            assert cut.hit.status == 206
            assert cut.range_field == f"bytes={first}-{last}"  # cut from the whole answer, not decided in full
            assert cut.slices == held_slices(cut.hit, SLICE) == _expected(cut, first, min(last, LENGTH - 1))
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            for first, last in RANGES:
                writer.write(_head(first, last))
                status, fields, body = await read_answer(reader)
                end = min(last, LENGTH - 1)
                assert (status, fields[b"content-range"]) == (206, f"bytes {first}-{end}/{LENGTH}".encode())
                assert body == BODY[first : end + 1]
        finally:
            writer.close()
        assert origin.hits["/v"] == 1
