"""Multipart Ranges fill their slices only while the origin sends at most a small multiple of what they serve
(core.fillcost); past that, the client's Range goes to the origin and the answer is relayed, nothing stored."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache import metrics
from edgecache.config import ClusterSettings, Listen
from edgecache.core.ring import Member, Ring
from tests.conftest import CLUSTER_KEY, Edge, make_config, start_edge, views_settled
from tests.e2e.procs import free_port
from tests.e2e.test_cluster import STALL
from tests.e2e.test_peer_fill_join import expecting, until
from tests.e2e.test_ranges_e2e import parse_multipart
from tests.origin import Obj, Origin
from tests.samples import sample_value

SLICE = 64 * 1024
DATA = os.urandom(40 * SLICE + 99)
BOUNDARY = "origin-made-boundary"


def multipart_origin(request: web.BaseRequest, obj: Obj | None) -> web.Response | None:
    """Origin hook: a Range of several parts gets a multipart/byteranges 206 (written here, independently of the
    edge's own layout code); anything else is left to the test origin."""
    rng = request.headers.get("Range", "")
    if obj is None or "," not in rng:
        return None
    body = b""
    for spec in rng.removeprefix("bytes=").split(","):
        a, _, b = spec.partition("-")
        first, last = int(a), min(int(b), len(obj.data) - 1)
        body += f"\r\n--{BOUNDARY}\r\nContent-Range: bytes {first}-{last}/{len(obj.data)}\r\n\r\n".encode()
        body += obj.data[first : last + 1]
    body += f"\r\n--{BOUNDARY}--\r\n".encode()
    headers = {"Content-Type": f"multipart/byteranges; boundary={BOUNDARY}", "ETag": str(obj.etag), **obj.headers}
    return web.Response(status=206, body=body, headers=headers)


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE)
    async with start_edge(replace(config, fast_path=request.param == "fast")) as e:
        origin.put("/m", DATA)
        origin.on_request = multipart_origin
        yield e


def origin_bytes() -> float:
    """Body bytes the edge has read from origins of the test site, fills and pass-through alike."""
    return metrics.ORIGIN_BYTES.labels("videos").wrapped._value.get()  # type: ignore[attr-defined, no-any-return]


async def settled(edge: Edge) -> None:
    """Until every fill started so far has ended and its slices are written."""
    await asyncio.gather(*edge.node.engine._tasks)
    await edge.node.engine.flush()


async def get_parts(edge: Edge, path: str, header: str) -> tuple[list[tuple[str, bytes]], int]:
    """The parts of a multipart answer, checked against DATA, and its body's length."""
    status, headers, body = await edge.get(path, Range=header)
    assert status == 206, (status, body[:200])
    assert int(headers["Content-Length"]) == len(body)
    parts = parse_multipart(body, headers["Content-Type"])
    for spec, (content_range, data) in zip(header.removeprefix("bytes=").split(","), parts, strict=True):
        a, _, b = spec.partition("-")
        first, last = int(a), int(b)
        assert content_range == f"bytes {first}-{last}/{len(DATA)}"
        assert data == DATA[first : last + 1]
    return parts, len(body)


SCATTERED = "bytes=" + ",".join(f"{i * SLICE + 7}-{i * SLICE + 7}" for i in range(1, 33))  # 32 one-byte parts


async def test_32_scattered_one_byte_parts_pass_through_on_a_miss(edge: Edge, origin: Origin) -> None:
    """Only the fill that learns the object's length runs (one slice, the first part's); the request itself is
    passed through, every time, whatever the query string: it would have filled 32 slices for 32 bytes."""
    handed = handed_off()
    for n, path in enumerate(["/m", "/m?bust=1", "/m?bust=2"], start=1):
        before = origin_bytes()
        parts, length = await get_parts(edge, path, SCATTERED)
        await settled(edge)
        assert len(parts) == 32
        assert origin_bytes() - before == SLICE + length
        assert origin.range_hits(path) == [f"bytes={SLICE}-{2 * SLICE - 1}", SCATTERED]
        assert origin.hits[path] == 2, n
    assert handed_off() == handed  # passed through on the fast path (proxy.passing)


async def test_32_scattered_one_byte_parts_pass_through_on_a_partly_stored_object(edge: Edge, origin: Origin) -> None:
    status, _, body = await edge.get("/m", Range="bytes=0-9")
    assert (status, body) == (206, DATA[:10])
    await settled(edge)
    assert origin.hits["/m"] == 1
    before, handed = origin_bytes(), handed_off()
    _, length = await get_parts(edge, "/m", SCATTERED)
    await settled(edge)
    assert origin_bytes() - before == length
    assert origin.range_hits("/m")[-1] == SCATTERED
    assert origin.hits["/m"] == 2
    assert handed_off() == handed


async def test_two_parts_within_the_bound_fill_and_are_then_hits(edge: Edge, origin: Origin) -> None:
    header = f"bytes=7-9,{20 * SLICE + 3}-{20 * SLICE + 5}"
    before, handed = origin_bytes(), handed_off()
    await get_parts(edge, "/m", header)
    await settled(edge)
    assert origin_bytes() - before == 2 * SLICE  # the two slices, filled; nothing passed through
    assert origin.range_hits("/m") == [f"bytes=0-{SLICE - 1}", f"bytes={20 * SLICE}-{21 * SLICE - 1}"]
    await get_parts(edge, "/m", header)
    assert origin.hits["/m"] == 2
    assert handed_off() == handed  # the miss and the hit on the fast path (proxy.multipart)


async def test_many_parts_fill_once_their_slices_are_stored(edge: Edge, origin: Origin) -> None:
    """The rule counts what is stored: the same 32 parts on an object whose slices are all in are hits."""
    status, _, body = await edge.get("/m")
    assert (status, body) == (200, DATA)
    await settled(edge)
    assert origin.hits["/m"] == 1
    await get_parts(edge, "/m", SCATTERED)
    assert origin.hits["/m"] == 1


def handed_off() -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": "handed_off"}) or 0.0


async def test_parts_partly_stored_are_fetched_for_the_answer_which_says_so(edge: Edge, origin: Origin) -> None:
    """Two parts, the first's slice stored: the second's is fetched for the answer (PARTIAL), on the fast path
    without a hand-off; then both are hits, and a HEAD names the same layout without a body."""
    assert (await edge.get("/m", Range="bytes=0-9"))[:3:2] == (206, DATA[:10])
    await settled(edge)
    handed, hits = handed_off(), origin.hits["/m"]
    header = f"bytes=7-9,{20 * SLICE + 3}-{20 * SLICE + 5}"
    statuses = []
    for _ in range(2):
        status, headers, body = await edge.get("/m", Range=header)
        assert parse_multipart(body, headers["Content-Type"]) == [
            (f"bytes 7-9/{len(DATA)}", DATA[7:10]),
            (f"bytes {20 * SLICE + 3}-{20 * SLICE + 5}/{len(DATA)}", DATA[20 * SLICE + 3 : 20 * SLICE + 6]),
        ]
        assert (status, int(headers["Content-Length"])) == (206, len(body))
        statuses.append(headers["Cache-Status"])
        await settled(edge)
    assert statuses == ["edgecache; fwd=partial", "edgecache; hit"]
    assert origin.hits["/m"] == hits + 1
    assert origin.range_hits("/m")[-1] == f"bytes={20 * SLICE}-{21 * SLICE - 1}"
    async with edge.session.head(edge.url + "/m", headers={"Host": "video.test", "Range": header}) as r:
        assert (r.status, await r.read()) == (206, b"")
        assert (r.headers["Content-Length"], r.headers["Content-Type"][:31]) == (
            headers["Content-Length"],
            "multipart/byteranges; boundary=",
        )
    assert handed_off() == handed


@pytest.mark.parametrize("fast", [True, False])
async def test_a_joined_multipart_miss_whose_body_fails_never_gets_the_starters_fields(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """B joins A's fill; the origin's answer names a field for A alone (private="X-Secret"), then its body fails
    before the first part's bytes. Both get the 502 of the failed fill, from it (one origin request): B's answer,
    from whichever path, never carries A's field."""
    gate = asyncio.Event()
    total = 3_000_000

    async def hook(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.path != "/sc":
            return None
        await gate.wait()
        fields = {
            "Cache-Control": 'public, max-age=60, private="X-Secret"', "X-Secret": "alice-secret", "ETag": '"v1"',
            "Content-Type": "application/octet-stream", "Content-Range": f"bytes 0-{2**20 - 1}/{total}",
        }  # fmt: skip
        resp = web.StreamResponse(status=206, headers=fields)
        resp.content_length = 2**20
        await resp.prepare(request)
        await resp.write(b"")
        assert request.transport is not None
        request.transport.abort()  # the body never comes
        return resp

    origin.on_request = hook
    ask = b"GET /sc HTTP/1.1\r\nHost: video.test\r\nRange: bytes=0-9,20-29\r\nConnection: close\r\n\r\n"
    config = replace(make_config(tmp_path / "c", [origin.url]), fast_path=fast)
    async with start_edge(config) as edge, asyncio.timeout(20):
        streams = [await asyncio.open_connection("127.0.0.1", edge.port) for _ in range(2)]
        streams[0][1].write(ask)
        await origin.wait_for_requests(1)  # A's fill is asked for
        streams[1][1].write(ask)
        # B has joined A's fill, not only begun (the requests in flight count it before it looks the object up).
        await until(lambda: expecting(edge, "/sc") >= 2)
        gate.set()
        got = []
        for reader, writer in streams:
            data = b""
            try:
                while chunk := await reader.read(65536):
                    data += chunk
            except ConnectionError:
                pass
            writer.close()
            got.append(data)
    assert [x.split(b"\r\n", 1)[0] for x in got] == [b"HTTP/1.1 502 Bad Gateway"] * 2, got
    assert b"alice-secret" not in got[1]
    assert origin.hits["/sc"] == 1


def misses() -> dict[str, float]:
    causes = ("cold", "expired", "evicted", "ring-moved", "peer-down", "uncacheable")
    return {c: sample_value("edgecache_misses_total", {"site": "videos", "cause": c}) or 0.0 for c in causes}


@pytest.mark.parametrize("fast", [True, False])
async def test_a_costly_multipart_at_a_stand_in_is_a_peer_down_miss(origin: Origin, tmp_path: Path, fast: bool) -> None:
    """node1 stands in for node2, which is down: the 32 scattered parts of node2's object are passed through, a
    miss counted peer-down on either path."""
    me, dead = free_port(), free_port()
    members = (Member("node1", f"127.0.0.1:{me}"), Member("node2", f"127.0.0.1:{dead}"))
    ring = Ring.of(members)
    path = next(p for p in (f"/m{i}" for i in range(100)) if ring.owner(f"videos|video.test|{p}").id == "node2")  # type: ignore[union-attr]
    origin.put(path, DATA)
    origin.on_request = multipart_origin
    cfg = make_config(tmp_path / "c", [origin.url], slice_bytes=SLICE)
    # cluster.timeout is also the pause watch's limit: a pause of the loop past it doubts what node1 stored, and the
    # miss is then counted expired, not peer-down. node2 is found down by refused connects, which take no timeout.
    settings = ClusterSettings(
        self_id="node1", key=CLUSTER_KEY, nodes=members, interval=0.1, timeout=STALL, rise=1, fall=2
    )
    cfg = replace(cfg, listen=(Listen("127.0.0.1", me),), cluster=settings, fast_path=fast)
    async with start_edge(cfg) as edge, asyncio.timeout(30):
        await views_settled([edge], lambda v: v.is_up("node1") and not v.is_up("node2"))
        status, _, body = await edge.get(path, Range="bytes=0-9")
        assert (status, body) == (206, DATA[:10])
        await settled(edge)
        before = misses()
        parts, _ = await get_parts(edge, path, SCATTERED)
        assert len(parts) == 32
        assert origin.range_hits(path)[-1] == SCATTERED  # passed through
        after = misses()
    assert {k: v - before[k] for k, v in after.items() if v != before[k]} == {"peer-down": 1}
