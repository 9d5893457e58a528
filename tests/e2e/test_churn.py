"""An origin whose object is a new version at every request: a request whose fills keep meeting new versions is
answered from one origin request, relayed unstored (core.churn), never the 502 "the object kept changing" it was."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache import metrics
from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
LENGTH = 3 * SLICE + 100  # slices 0-3: a suffix range needs slice 0 (the length) and slice 3


def version(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(LENGTH))


def churning(origin: Origin) -> None:
    """Every origin request gets the next version (strong ETag "vN"), so a fill's second slice is always another
    version than its first."""
    served = [0]

    def next_version(request: web.BaseRequest, obj: Obj | None) -> Obj:
        served[0] += 1
        return Obj(version(served[0]), etag=f'"v{served[0]}"', last_modified=None)

    origin.on_request = next_version
    origin.put("/c.bin", version(0))


def changing_misses() -> float:
    return float(metrics.MISSES.labels("videos", "changing").wrapped._value.get())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_range_of_an_object_that_changes_at_every_request_is_relayed_from_one_version(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Slice 0 (v1) gives the length, slice 3 is v2: started again; slice 0 (v3), slice 3 (v4): the third try is
    the relay of the client's range, one request, answered by v5."""
    churning(origin)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    before = changing_misses()
    async with start_edge(config) as edge:
        headers = {"Host": "video.test", "Range": "bytes=-100", "Accept-Encoding": "gzip"}
        async with edge.session.get(edge.url + "/c.bin", headers=headers) as r:
            status, got, body = r.status, r.headers, await r.read()
    assert status == 206
    assert body == version(5)[-100:]
    assert (got["ETag"], got["Content-Range"], got["Content-Length"]) == (
        '"v5"',
        f"bytes {LENGTH - 100}-{LENGTH - 1}/{LENGTH}",
        "100",
    )
    assert got["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="changing"'
    assert origin.hits["/c.bin"] == 5
    relay = origin.seen[-1]
    assert (relay.method, relay.headers["Range"], relay.headers.get("Accept-Encoding")) == ("GET", "bytes=-100", None)
    assert changing_misses() - before == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_list_of_ranges_of_an_object_that_keeps_changing_is_answered_whole(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """One origin request cannot give a multipart answer the edge could check: the whole object is asked for and
    relayed as a 200 (a server may ignore Range, RFC 9110 14.2). The parts' slices are fetched side by side, so
    which met a new version first varies: the answer is the version of the last origin request, the relay."""
    churning(origin)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        status, got, body = await edge.get("/c.bin", Range="bytes=-10,140000-140010")
    last = origin.hits["/c.bin"]
    assert last <= 10  # three fills (the fast path tries once more) of three slices at most each, and the relay
    assert (status, got["ETag"], got["Content-Length"]) == (200, f'"v{last}"', str(LENGTH))
    assert body == version(last)
    assert got["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="changing"'
    assert (origin.seen[-1].method, origin.seen[-1].headers.get("Range")) == ("GET", None)
