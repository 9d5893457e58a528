"""A copy taken only whole (no validator; a body of unknown length) larger than the largest stored whole
(cache.max_object_size, by default an eighth of the disk budget; a site's sites.cache.max_object_size) is served
exactly to whoever asked, streamed from the origin, and never stored: a length over it in the head, or a body of
unknown length that passes it on the way. An object stored slice by slice is not bounded (core.objectsize)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache import metrics
from edgecache.config import Config
from edgecache.core.freshness import Policy
from edgecache.storage.store import slice_name
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_chunked_fills import Chunked, stored_slices
from tests.e2e.test_collapsed_reads import until
from tests.e2e.test_unread_fills import Paced
from tests.origin import Origin

SLICE = 64 * 1024
DISK = 256 * SLICE  # 16 MiB: the largest copy stored whole is an eighth of it by default, 32 slices
LIMIT = DISK // 8
OVER = os.urandom(LIMIT + 5 * SLICE + 123)
UNDER = os.urandom(LIMIT)  # the limit itself is stored
TOO_LARGE = 'edgecache; fwd=uri-miss; detail="too-large"'
WHOLE = {"etag": None, "last_modified": None}  # no validator: a copy taken only whole (ObjectMeta.whole)


def too_large() -> float:
    return metrics.TOO_LARGE.wrapped._value.get()  # type: ignore[attr-defined, no-any-return]


def uncacheable() -> float:
    return metrics.MISSES.labels("videos", "uncacheable").wrapped._value.get()  # type: ignore[no-any-return]


def config(origin: Origin, tmp_path: Path, fast: bool) -> Config:
    cfg = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE, disk_bytes=DISK, memory_bytes=DISK)
    return replace(cfg, fast_path=fast)


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    async with start_edge(config(origin, tmp_path, request.param == "fast")) as e:
        yield e


def expecting(edge: Edge) -> int:
    """Requests that joined (or started) a fill in flight and are still to read it (Fill.expecting)."""
    return sum(len(f.expecting) for fills in edge.node.engine.fills._by_key.values() for f in fills)


async def nothing_stored(edge: Edge) -> None:
    await edge.node.engine.flush()
    assert stored_slices(edge) == []
    assert len(edge.node.store.memory) == 0


async def test_a_length_over_the_limit_is_served_whole_and_never_stored(edge: Edge, origin: Origin) -> None:
    origin.put("/over.bin", OVER, **WHOLE)
    counted, misses = too_large(), uncacheable()
    for n in (1, 2):
        status, got, body = await edge.get("/over.bin")
        assert (status, len(body), body == OVER) == (200, len(OVER), True)
        assert got["Content-Length"] == str(len(OVER))
        assert got["Cache-Status"] == TOO_LARGE
        assert origin.hits["/over.bin"] == n  # each request asks the origin: nothing was stored
    assert (too_large(), uncacheable()) == (counted + 2, misses + 2)
    await nothing_stored(edge)


async def test_a_length_at_the_limit_is_stored(edge: Edge, origin: Origin) -> None:
    origin.put("/under.bin", UNDER, **WHOLE)
    status, got, body = await edge.get("/under.bin")
    assert (status, body == UNDER, got["Cache-Status"]) == (200, True, "edgecache; fwd=uri-miss; stored")
    status, got, body = await edge.get("/under.bin")
    assert (status, body == UNDER, got["Cache-Status"]) == (200, True, "edgecache; hit")
    assert origin.hits["/under.bin"] == 1


async def test_an_object_stored_slice_by_slice_is_not_bounded(edge: Edge, origin: Origin) -> None:
    """With a strong validator and Range honoured, its slices are fetched and evicted one by one, as viewers ask."""
    origin.put("/sliced.bin", OVER)
    first, last = 20 * SLICE, 40 * SLICE - 1
    status, got, body = await edge.get("/sliced.bin")
    assert (status, body == OVER, got["Cache-Status"]) == (200, True, "edgecache; fwd=uri-miss; stored")
    status, got, body = await edge.get("/sliced.bin", Range=f"bytes={first}-{last}")
    assert (status, body == OVER[first : last + 1], got["Cache-Status"]) == (206, True, "edgecache; hit")
    assert origin.hits["/sliced.bin"] == 1


async def test_a_chunked_body_that_passes_the_limit_is_served_exactly_and_not_stored(
    edge: Edge, origin: Origin
) -> None:
    origin.on_request = Chunked(OVER)
    counted = too_large()
    for n in (1, 2):
        status, got, body = await edge.get("/chunked.bin")
        assert (status, len(body), body == OVER) == (200, len(OVER), True)
        assert "Content-Length" not in got
        assert origin.hits["/chunked.bin"] == n
    assert too_large() == counted + 2
    await nothing_stored(edge)


async def test_a_chunked_body_within_the_limit_is_stored(edge: Edge, origin: Origin) -> None:
    origin.on_request = Chunked(UNDER)
    assert (await edge.get("/chunked.bin"))[2] == UNDER
    status, got, body = await edge.get("/chunked.bin")
    assert (status, body == UNDER, got["Cache-Status"]) == (200, True, "edgecache; hit")
    assert origin.hits["/chunked.bin"] == 1


async def test_ranges_of_an_object_over_the_limit_are_exact_and_never_stored(edge: Edge, origin: Origin) -> None:
    origin.put("/over.bin", OVER, **WHOLE)
    first, last = 3 * SLICE - 5, 4 * SLICE + 9
    for _ in (1, 2):
        status, got, body = await edge.get("/over.bin", Range=f"bytes={first}-{last}")
        assert (status, body) == (206, OVER[first : last + 1])
        assert got["Content-Range"] == f"bytes {first}-{last}/{len(OVER)}"
        assert got["Cache-Status"] == TOO_LARGE
    status, _, body = await edge.get("/over.bin", Range="bytes=-100")
    assert (status, body) == (206, OVER[-100:])
    # Each: the run of slices its fill asked (the first slice, for a range from the end of an object of unknown
    # length), whose answer told a length over the limit, then the client's own range, passed through.
    run = f"bytes={2 * SLICE}-{5 * SLICE - 1}"
    ranged = [run, f"bytes={first}-{last}"] * 2 + [f"bytes=0-{SLICE - 1}", "bytes=-100"]
    assert origin.range_hits("/over.bin") == ranged
    await nothing_stored(edge)


async def test_two_viewers_of_an_object_over_the_limit_share_one_origin_request(edge: Edge, origin: Origin) -> None:
    """The second joins the first's fill before its head comes: both stream its one origin answer."""
    origin.put("/over.bin", OVER, **WHOLE)
    origin.gate = asyncio.Event()
    async with asyncio.timeout(20):
        first = asyncio.ensure_future(edge.get("/over.bin"))
        await origin.wait_for_requests(1)
        second = asyncio.ensure_future(edge.get("/over.bin"))
        await until(lambda: expecting(edge) == 2)  # both are to read the one fill
        origin.gate.set()
        answers = await asyncio.gather(first, second)
    for status, got, body in answers:
        assert (status, len(body), body == OVER) == (200, len(OVER), True)
        assert got["Cache-Status"] == TOO_LARGE
    assert origin.hits["/over.bin"] == 1
    await nothing_stored(edge)


async def test_the_fill_of_an_object_over_the_limit_stops_once_its_viewer_has_left(edge: Edge, origin: Origin) -> None:
    size = 1024 * SLICE  # 64 MiB, of which the client reads 2 slices
    data = await asyncio.to_thread(os.urandom, size)
    hook = Paced(size, 8 * SLICE, data=data, fields={"Cache-Control": "public, max-age=3600"})  # no validator
    origin.on_request = hook
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /paced.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert TOO_LARGE.encode() in head
    assert await reader.readexactly(2 * SLICE) == hook.data[: 2 * SLICE]
    writer.transport.abort()
    fills = list(edge.node.engine._tasks)
    assert len(fills) == 1
    hook.go.set()
    async with asyncio.timeout(20):
        await asyncio.gather(*fills, return_exceptions=True)
        await hook.ended.wait()  # the origin connection went with the fill
    assert hook.written < size // 4
    await nothing_stored(edge)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_sites_own_limit_overrides_the_nodes(origin: Origin, tmp_path: Path, fast: bool) -> None:
    cfg = config(origin, tmp_path, fast)
    small = replace(cfg.sites[0], policy=Policy(max_object_size=SLICE))
    large = replace(cfg.sites[0], name="large", hosts=("large.test",), policy=Policy(max_object_size=DISK))
    origin.put("/a.bin", UNDER[: SLICE + 1], **WHOLE)
    origin.put("/b.bin", OVER, **WHOLE)
    async with start_edge(replace(cfg, sites=(small, large))) as edge:
        for path in ("/a.bin", "/b.bin"):
            for host, hits, cache_status in (("video.test", 1, TOO_LARGE), ("video.test", 2, TOO_LARGE)):
                status, got, body = await edge.get(path, host=host)
                assert (status, body, got["Cache-Status"]) == (200, origin.objects[path].data, cache_status)
                assert origin.hits[path] == hits
        await nothing_stored(edge)
        for path in ("/a.bin", "/b.bin"):
            for cache_status in ("edgecache; fwd=uri-miss; stored", "edgecache; hit"):
                status, got, body = await edge.get(path, host="large.test")
                assert (status, body, got["Cache-Status"]) == (200, origin.objects[path].data, cache_status)
            assert origin.hits[path] == 3


async def test_a_range_that_joined_the_fill_of_an_object_over_the_limit_asks_for_itself(
    edge: Edge, origin: Origin
) -> None:
    """A range of another request's answer too large to store is passed through, the client's range asked: the fill
    streams its body from the first byte only. It does not hold that fill back meanwhile."""
    origin.put("/over.bin", OVER, **WHOLE)
    origin.gate = asyncio.Event()
    first, last = 30 * SLICE + 7, 36 * SLICE
    async with asyncio.timeout(20):
        whole = asyncio.ensure_future(edge.get("/over.bin"))
        await origin.wait_for_requests(1)
        ranged = asyncio.ensure_future(edge.get("/over.bin", Range=f"bytes={first}-{last}"))
        await until(lambda: expecting(edge) == 2)  # both joined the one fill
        origin.gate.set()
        (status, got, body), (rstatus, rgot, rbody) = await asyncio.gather(whole, ranged)
    assert (status, len(body), body == OVER, got["Cache-Status"]) == (200, len(OVER), True, TOO_LARGE)
    assert (rstatus, rbody, rgot["Content-Range"]) == (206, OVER[first : last + 1], f"bytes {first}-{last}/{len(OVER)}")
    assert rgot["Cache-Status"] == TOO_LARGE
    assert origin.range_hits("/over.bin") == [None, f"bytes={first}-{last}"]
    await nothing_stored(edge)


async def test_a_stored_copy_found_to_be_taken_only_whole_and_too_large_goes(edge: Edge, origin: Origin) -> None:
    """An object with a validator is stored slice by slice: a GET with no Range cannot tell that its origin ignores
    Range. A fill of slices the copy lacks learns it (a 200 to a range: a copy taken only whole) and that it is over
    the limit: the request reading the copy starts again as a miss, whole and exact from the origin, and the copy it
    could never complete goes (kept, every request reading it met the same gap, for good). Nothing remembers that the
    origin ignores Range once the copy has gone: the next GET with no Range stores it again, slice by slice."""
    origin.put("/ignored.bin", OVER, ignore_range=True)
    status, got, body = await edge.get("/ignored.bin")
    assert (status, body == OVER, got["Cache-Status"]) == (200, True, "edgecache; fwd=uri-miss; stored")
    await edge.node.engine.flush()
    store = edge.node.store
    # Slice 0 alone left, as after a viewer that left early: the copy is sliced, and partly stored.
    [(key, meta)] = list(store._meta._items.items())
    for index in range(1, meta.slice_count):
        store.memory.delete(slice_name(key, meta.slice_version, index))
        await store.disk.delete(slice_name(key, meta.slice_version, index))
    counted = too_large()
    status, got, body = await edge.get("/ignored.bin")
    assert (status, len(body), body == OVER) == (200, len(OVER), True)
    assert origin.hits["/ignored.bin"] == 3  # the first GET, the fill of slices 1 on (a 200), the request again
    assert too_large() == counted + 1
    assert origin.range_hits("/ignored.bin")[1] == f"bytes={SLICE}-{5 * SLICE - 1}"
