"""A multipart/byteranges answer is one version of the object, whatever its parts span: a part over several slices
the stored copy lacks is never cut by a new version met once the head has gone out.

A production edge holds the whole object or fetches it first (Varnish answers ranges from a complete object, ATS
serves several ranges from a complete copy only). Here every fill the missing slices of the parts take has its
first byte read before the head: each is then known to bring the stored copy's version; a new one met there starts
the request again, before any byte is sent. That waits for at most core.fillcost.MAX_PROBED_FILLS fills; a
multipart Range that would take more is passed through (the origin's own answer is one version, nothing stored).

Deterministic: the origin turns v0 into v1 when slice 3 is asked (that answer is still v0), so slice 4 is v1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core.fillcost import MAX_PROBED_FILLS
from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
LENGTH = 6 * SLICE + 100  # slices 0-6


def version(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(LENGTH))


def multipart(body_of: bytes, content_type: str, spans: list[tuple[int, int]]) -> bytes:
    boundary = content_type.removeprefix("multipart/byteranges; boundary=")
    parts = [
        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {first}-{last}/{LENGTH}\r\n\r\n".encode()
        + body_of[first : last + 1]
        for first, last in spans
    ]
    return b"".join(parts) + f"\r\n--{boundary}--\r\n".encode()


def v1_after_slice(origin: Origin, n: int) -> None:
    async def then_v1(request: web.BaseRequest, obj: Obj | None) -> None:
        if request.headers.get("Range", "").startswith(f"bytes={n * SLICE}-"):  # answered as v0: v1 after it
            origin.put("/c.bin", version(1), etag='"v1"', last_modified=None)

    origin.on_request = then_v1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_part_over_several_missing_slices_is_never_cut_by_a_new_version(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    origin.put("/c.bin", version(0), etag='"v0"', last_modified=None)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/c.bin", Range="bytes=0-9")
        assert (status, body) == (206, version(0)[:10])  # v0 stored, its slice 0
        await edge.node.engine.flush()
        v1_after_slice(origin, 3)
        spans = [(0, 9), (2 * SLICE + 5, 4 * SLICE + 10)]  # the second over slices 2, 3 and 4, none stored
        status, got, body = await edge.get("/c.bin", Range=",".join(f"{a}-{b}" for a, b in spans).join(["bytes=", ""]))
    assert (status, got["ETag"]) == (206, '"v1"')
    assert body == multipart(version(1), got["Content-Type"], spans)
    # v0's slices 2 and 3, then 4 as v1 before the head: started again on v1, which lacks 0, 2 and 3
    assert origin.range_hits("/c.bin") == [f"bytes={n * SLICE}-{(n + 1) * SLICE - 1}" for n in (0, 2, 3, 4, 0, 2, 3)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_multipart_range_taking_more_fills_than_are_read_first_is_passed_through(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Past MAX_PROBED_FILLS fills before the head, the answer is the origin's own, relayed: one version."""
    length = (MAX_PROBED_FILLS + 2) * SLICE
    data = bytes(i % 253 for i in range(length))
    origin.put("/m.bin", data, etag='"m"', last_modified=None)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/m.bin", Range="bytes=0-9")
        assert (status, body) == (206, data[:10])
        asked = f"bytes=0-9,{SLICE}-{length - 1}"  # slices 1 to the last, none stored: one fill each
        status, got, body = await edge.get("/m.bin", Range=asked)
    # the client's Range went to the origin as it was; this origin answers several ranges whole (tests.origin)
    assert origin.range_hits("/m.bin") == [f"bytes=0-{SLICE - 1}", asked]
    assert (status, got["Cache-Status"], body) == (200, "edgecache; fwd=uri-miss", data)
