"""A multipart/byteranges answer is one version of the object, whatever its parts span: a part over several slices
the stored copy lacks is never cut by a new version met once the head has gone out.

A production edge holds the whole object or fetches it first (Varnish answers ranges from a complete object, ATS
serves several ranges from a complete copy only). Here every fill the missing slices of the parts take has its
first byte read before the head: each is then known to bring the stored copy's version; a new one met there starts
the request again, before any byte is sent. That waits for at most core.fillcost.MAX_PROBED_FILLS fills; a
multipart Range that would take more is passed through (the origin's own answer is one version, nothing stored).

The origin answers slice 4 as v1, and slices 2 and 3, asked with it (all three in before any is answered:
tests.origin.Together), as v0.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core.fillcost import MAX_PROBED_FILLS
from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin, Together

SLICE = 64 * 1024
LENGTH = 6 * SLICE + 100  # slices 0-6


def version(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(LENGTH))


def slice_range(n: int) -> str:
    return f"bytes={n * SLICE}-{(n + 1) * SLICE - 1}"


def slices(*ns: int) -> list[str | None]:
    return [slice_range(n) for n in ns]


def multipart(body_of: bytes, content_type: str, spans: list[tuple[int, int]]) -> bytes:
    boundary = content_type.removeprefix("multipart/byteranges; boundary=")
    parts = [
        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {first}-{last}/{LENGTH}\r\n\r\n".encode()
        + body_of[first : last + 1]
        for first, last in spans
    ]
    return b"".join(parts) + f"\r\n--{boundary}--\r\n".encode()


def v1_at_slice(origin: Origin, n: int, together: int) -> None:
    """Slice `n`'s answer is v1, the first `together` requests' others v0: they are all in before any is answered
    (tests.origin.Together), so which version each gets never hangs on the order the fills were asked in."""

    def v1(request: web.BaseRequest) -> Obj | None:
        if request.headers.get("Range", "").startswith(f"bytes={n * SLICE}-"):
            return origin.put("/c.bin", version(1), etag='"v1"', last_modified=None)
        return None  # the version there when it was asked

    origin.on_request = Together(together, then=v1)


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
        v1_at_slice(origin, 4, 3)
        spans = [(0, 9), (2 * SLICE + 5, 4 * SLICE + 10)]  # the second over slices 2, 3 and 4, none stored
        status, got, body = await edge.get("/c.bin", Range=",".join(f"{a}-{b}" for a, b in spans).join(["bytes=", ""]))
    assert got["ETag"] == '"v1"'
    # v0's slices 2 and 3 and v1's 4, asked together before the head; then, started again, an exact 206 of v1's
    # slices (which lacks 0, 2 and 3), or, when v0's heads were taken after v1's and it started again on v0 and met
    # v1 a second time, v1 as the origin sends it (changing.relayed; this origin answers several ranges whole)
    hits = origin.range_hits("/c.bin")
    assert [hits[0], sorted(hits[1:4])] == [slice_range(0), slices(2, 3, 4)]
    if 'detail="changing"' in got["Cache-Status"]:
        assert (status, body, hits[-1]) == (200, version(1), None)
    else:
        assert (status, body) == (206, multipart(version(1), got["Content-Type"], spans))
        assert sorted(hits[4:]) == slices(0, 2, 3)


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
