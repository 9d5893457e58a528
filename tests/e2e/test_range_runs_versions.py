"""A single Range over several runs of missing slices (held ones between them) is one version of the object: the
first byte of every fill those runs take is read before its head, so a new version met at a later run's fill
starts the request again instead of cutting the viewer's 206 after its head (a failed seek).

The rule is multipart's (respond.probed_slices, core.fillcost.fill_runs): every fill's first byte before the head,
at most core.fillcost.MAX_PROBED_FILLS of them, read together (one origin round trip, not one per fill).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

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

        def v1_at_slice_2(request: web.BaseRequest, obj: Obj | None) -> Obj | None:
            if request.headers.get("Range") == slice_range(2):  # this answer is v1 already
                return origin.put("/r.bin", version(1), etag='"v1"', last_modified=None)
            return None

        origin.on_request = v1_at_slice_2
        first, last = 5, 2 * SLICE + 10  # slices 0 and 2 missing, 1 held between them: two fills
        status, got, body = await edge.get("/r.bin", Range=f"bytes={first}-{last}")
    assert (status, got["ETag"], got["Content-Range"]) == (206, '"v1"', f"bytes {first}-{last}/{LENGTH}")
    assert body == version(1)[first : last + 1]
    hits = origin.range_hits("/r.bin")
    # both runs' fills asked before the head (together: either may come first), then v1's slices on the restart
    assert hits[0] == slice_range(1)
    assert sorted(hits[1:3]) == [slice_range(0), slice_range(2)]
    assert slice_range(2) not in hits[3:]  # v1's slice 2 came with the probe: stored, never asked again
