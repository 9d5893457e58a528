"""A single Range over several runs of missing slices (held ones between them) is one version of the object: the
first byte of every fill those runs take is read before its head, so a new version met at a later run's fill
starts the request again instead of cutting the viewer's 206 after its head (a failed seek).

The rule is multipart's (respond.probed_slices, core.fillcost.fill_runs): every fill's first byte before the head,
at most core.fillcost.MAX_PROBED_FILLS of them, read together (one origin round trip, not one per fill).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin, Together

SLICE = 64 * 1024
LENGTH = 6 * SLICE + 100  # slices 0-6


def version(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(LENGTH))


def slice_range(n: int) -> str:
    return f"bytes={n * SLICE}-{(n + 1) * SLICE - 1}"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_range_over_runs_cut_by_held_slices_is_never_cut_by_a_new_version(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    origin.put("/r.bin", version(0), etag='"v0"', last_modified=None)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=4, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/r.bin", Range=f"bytes={SLICE}-{SLICE + 9}")
        assert (status, body) == (206, version(0)[SLICE : SLICE + 10])  # v0 stored: its slice 1 alone
        await edge.node.engine.flush()

        def v1_at_slice_2(request: web.BaseRequest) -> Obj | None:
            if request.headers.get("Range") == slice_range(2):  # this answer is v1 already
                return origin.put("/r.bin", version(1), etag='"v1"', last_modified=None)
            return None  # the version there when it was asked

        # Slices 0 and 2 asked together (before, one after another: each waited the origin's 3 s), then 0 is v0's
        origin.on_request = Together(2, then=v1_at_slice_2)
        first, last = 5, 2 * SLICE + 10  # slices 0 and 2 missing, 1 held between them: two fills
        status, got, body = await edge.get("/r.bin", Range=f"bytes={first}-{last}")
    assert (status, got["ETag"], got["Content-Range"]) == (206, '"v1"', f"bytes {first}-{last}/{LENGTH}")
    assert body == version(1)[first : last + 1]
    hits = origin.range_hits("/r.bin")
    # Both runs' fills asked together before the head. Then, started again on v1, whose copy has slice 2 (its fill
    # stored it): 0 and 1 in one fill; or, when slice 0's v0 head was taken after slice 2's and it started again on
    # v0 and met v1 a second time, the client's Range relayed (changing.relayed): v1's exact 206 either way.
    assert [hits[0], sorted(hits[1:3])] == [slice_range(1), [slice_range(0), slice_range(2)]]
    relayed = 'detail="changing"' in got["Cache-Status"]
    assert hits[-1] == f"bytes={first}-{last}" if relayed else hits[3:] == [f"bytes=0-{2 * SLICE - 1}"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_fills_of_a_range_are_probed_together_and_still_collapsed(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Slices 1, 3 and 5 held: a Range over 0-6 takes four fills (0, 2, 4, 6), whose first bytes are all asked of
    the origin before it answers any (one round trip before the head, not four); a second viewer's same Range joins
    those fills (each slice asked once)."""
    data = version(0)
    origin.put("/t.bin", data, etag='"t"', last_modified=None)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=4, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        for held in (1, 3, 5):
            status, _, body = await edge.get("/t.bin", Range=f"bytes={held * SLICE}-{held * SLICE + 9}")
            assert (status, body) == (206, data[held * SLICE : held * SLICE + 10])
        await edge.node.engine.flush()
        together = Together(4)
        origin.on_request = together
        asked = f"bytes=5-{LENGTH - 1}"
        answers = await asyncio.gather(*(edge.get("/t.bin", Range=asked) for _ in range(2)))
    for status, got, body in answers:
        assert (status, got["Content-Range"], body) == (206, f"bytes 5-{LENGTH - 1}/{LENGTH}", data[5:])
    fetched = [slice_range(n) for n in (0, 2, 4, 6)]  # the last whole too: the origin ends it at the object's end
    assert sorted(e[1] or "" for e in together.events[:4]) == fetched
    assert [e[0] for e in together.events] == ["asked"] * 4 + ["answered"] * 4
    assert sorted(origin.range_hits("/t.bin")[3:]) == fetched  # each once: the second viewer joined the fills
