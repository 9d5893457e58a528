"""An origin whose object is a new version at every request: a request whose fills keep meeting new versions is
answered from one origin request, relayed unstored (core.churn), never the 502 "the object kept changing" it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgecache import metrics
from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
LENGTH = 3 * SLICE + 100  # slices 0-3: a suffix range needs slice 0 (the length) and slice 3


def version(n: int) -> bytes:
    return bytes((i * (n + 2) + n) % 251 for i in range(LENGTH))


def churning(origin: Origin, settled: Callable[[], Awaitable[None]] | None = None) -> None:
    """Every origin request gets the next version (strong ETag "vN"), so a fill's second slice is always another
    version than its first. `settled`: awaited before answering any request but a slice 0's, so the copy the slice
    0 before it named is stored by then (else the later slice may be judged first, a copy of its own)."""
    served = [0]

    async def next_version(request: web.BaseRequest, obj: Obj | None) -> Obj:
        if settled is not None and not request.headers.get("Range", "").startswith("bytes=0-"):
            await settled()
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
    the relay of the client's range, one request, answered by v5 (v6 on the fast path when it tried its slice once
    more before handing over, diskhit._settled). When a try finds the copy its slice 3's fill stored (a race between
    that fill's metadata and the look-up: v2 or v4), it is answered from it. Exact bytes of one version either way;
    test_a_list_of_ranges_... below takes the relay every time."""
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    before = changing_misses()
    async with start_edge(config) as edge:
        churning(origin, edge.node.engine.flush)
        headers = {"Host": "video.test", "Range": "bytes=-100", "Accept-Encoding": "gzip"}
        async with edge.session.get(edge.url + "/c.bin", headers=headers) as r:
            status, got, body = r.status, r.headers, await r.read()
    last = origin.hits["/c.bin"]
    assert 2 <= last <= 6
    assert (status, body) == (206, version(last)[-100:])
    assert (got["ETag"], got["Content-Range"], got["Content-Length"]) == (
        f'"v{last}"',
        f"bytes {LENGTH - 100}-{LENGTH - 1}/{LENGTH}",
        "100",
    )
    if got["Cache-Status"] == "edgecache; hit":  # from the copy the last slice 3 fill stored (its version, last)
        return
    assert got["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="changing"'
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


async def test_an_answer_cut_by_a_new_version_logs_the_body_bytes_it_sent(
    origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A miss's range over slices 1 and 2, one origin request each: slice 1 (v1) went out whole, then slice 2 came as
    v2, and the answer is cut there, never mixed. Its log said 'after 0 bytes' (aiohttp's body_length, set only
    at the body's end), which made every cut look like a head sent before any byte was in hand."""
    churning(origin)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=False)
    got = bytearray()

    async def read_all(r: aiohttp.ClientResponse) -> None:
        async for chunk in r.content.iter_any():
            got.extend(chunk)

    async with start_edge(config) as edge:
        headers = {"Host": "video.test", "Range": "bytes=70000-140000"}
        async with edge.session.get(edge.url + "/c.bin", headers=headers) as r:
            assert (r.status, r.headers["ETag"], r.headers["Content-Length"]) == (206, '"v1"', "70001")
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_all(r)
    assert bytes(got) == version(1)[70000 : 2 * SLICE]
    aborted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("aborting response")]
    assert len(aborted) == 1
    assert aborted[0].startswith(f"aborting response to /c.bin after {2 * SLICE - 70000} body bytes: ")
    assert origin.range_hits("/c.bin") == [f"bytes={SLICE}-{2 * SLICE - 1}", f"bytes={2 * SLICE}-{3 * SLICE - 1}"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_list_of_ranges_is_never_cut_by_a_new_version_of_its_later_part(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A stored copy lacks the slices of both parts (3, then 2). Only the first was read before the head went out:
    it came as the stored version, the second as a new one, and the answer was cut after its first part (seen under
    load in the test above: a copy a try's side-by-side slice fill had stored). The first bytes of each part's
    first missing slice are read before the head now: a new version met there starts the request again."""
    origin.put("/c.bin", version(0), etag='"v0"', last_modified=None)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), fast_path=fast)
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/c.bin", Range="bytes=0-9")
        assert (status, body) == (206, version(0)[:10])  # "v0" stored, its slice 0
        await edge.node.engine.flush()

        async def then_v1(request: web.BaseRequest, obj: Obj | None) -> None:
            if request.headers.get("Range", "").startswith(f"bytes={3 * SLICE}-"):  # slice 3, as "v0": v1 after
                origin.put("/c.bin", version(1), etag='"v1"', last_modified=None)

        origin.on_request = then_v1
        status, got, body = await edge.get("/c.bin", Range="bytes=-10,140000-140010")
    # slice 0 of v0; slice 3 of v0 and slice 2 of v1 read before the head; started again: slice 3 of v1
    assert origin.range_hits("/c.bin") == [f"bytes={n * SLICE}-{(n + 1) * SLICE - 1}" for n in (0, 3, 2, 3)]
    assert (status, got["ETag"], got["Cache-Status"]) == (206, '"v1"', "edgecache; fwd=partial")
    boundary = got["Content-Type"].removeprefix("multipart/byteranges; boundary=")
    parts = [
        f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {first}-{last}/{LENGTH}\r\n\r\n".encode()
        + version(1)[first : last + 1]
        for first, last in ((LENGTH - 10, LENGTH - 1), (140000, 140010))
    ]
    assert body == b"".join(parts) + f"\r\n--{boundary}--\r\n".encode()
