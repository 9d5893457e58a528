"""Fills of unknown length (chunked, no Content-Length) stream into slices like any other fill: bounded memory,
clients served as bytes arrive, the object stored only once its body has ended whole."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgecache.proxy.fill import UNKNOWN_WINDOW, WINDOW, Fill
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin
from tests.wire import fast_path_outcomes

SLICE = 64 * 1024
BODY = os.urandom(40 * SLICE + 1234)  # 41 slices, the last one short
BOUND = (WINDOW + 2) * SLICE  # what one fill of a body of unknown length may hold at once, its window widened
SWR = "max-age=1, stale-while-revalidate=600"


class Chunked:
    """Origin hook: GETs of the path are answered with a chunked 200 (no Content-Length) of `data`, written 16 KiB at
    a time, Range ignored. It can hold after `hold_at` bytes until `go` is set, and cut the connection (no
    terminating chunk) after `cut_at` bytes."""

    def __init__(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.data = data
        self.headers = headers or {"Cache-Control": "public, max-age=3600", "ETag": '"c1"'}
        self.hold_at: int | None = None
        self.cut_at: int | None = None
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream", **self.headers})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(self.data), 16 * 1024):
            if i == self.hold_at:
                self.holding.set()
                await self.go.wait()
            if self.cut_at is not None and i >= self.cut_at:
                assert request.transport is not None
                request.transport.close()  # what was written goes out; the terminating chunk never does
                return resp
            await resp.write(self.data[i : i + 16 * 1024])
        await resp.write_eof()
        return resp


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE)
    config = replace(config, fast_path=request.param == "fast")
    async with start_edge(config) as e:
        yield e


@pytest.fixture
def fills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Fill, int]]:
    """(fill, bytes in its buffers) after every piece of body a fill takes in: the bound's witness."""
    seen: list[tuple[Fill, int]] = []
    feed = Fill.feed

    def counted(self: Fill, chunk: bytes | memoryview, on_complete: object) -> None:
        feed(self, chunk, on_complete)  # type: ignore[arg-type]
        seen.append((self, sum(len(b) for b in self._bufs.values())))

    monkeypatch.setattr(Fill, "feed", counted)
    return seen


def stored_slices(edge: Edge) -> list[str]:
    tiers = [slot.tier for slot in edge.node.store.disk._slots if slot.tier is not None]  # every disk
    return [k for tier in tiers for k in tier._cache.iterkeys() if str(k).startswith("s:")]


async def test_chunked_body_streams_into_slices_and_is_then_a_hit(
    edge: Edge, origin: Origin, fills: list[tuple[Fill, int]]
) -> None:
    hook = Chunked(BODY)
    hook.hold_at = 32 * SLICE
    origin.on_request = hook
    headers = {"Host": "video.test"}
    handed_off = fast_path_outcomes()["handed_off"]
    async with edge.session.get(edge.url + "/c", headers=headers) as first:
        assert first.status == 200
        assert "Content-Length" not in first.headers
        # Bytes reach the client while the origin still holds the rest of the body back.
        assert await first.content.readexactly(3 * SLICE) == BODY[: 3 * SLICE]
        await hook.holding.wait()
        await edge.node.engine.flush()  # slices on disk: the fill has let go of those behind its window
        fill = fills[-1][0]
        assert min(fill._bufs) > 0
        # A client joining now starts at byte 0: what the fill let go comes from the store, the rest from the fill.
        async with edge.session.get(edge.url + "/c", headers=headers) as second:
            assert second.status == 200
            assert await second.content.readexactly(hook.hold_at) == BODY[: hook.hold_at]
            hook.go.set()
            assert await second.read() == BODY[hook.hold_at :]
        assert await first.content.read() == BODY[3 * SLICE :]
    assert origin.hits["/c"] == 1
    assert fast_path_outcomes()["handed_off"] == handed_off  # the joining client's stream is the fast path's too
    held = max(n for _, n in fills)
    assert held <= BOUND < len(BODY) // 3
    assert fill.peak == held

    status, got, body = await edge.get("/c")
    assert (status, body) == (200, BODY)
    assert got["Content-Length"] == str(len(BODY))
    assert "hit" in got["Cache-Status"]
    first_byte, last_byte = 5 * SLICE - 7, 9 * SLICE + 3
    status, got, body = await edge.get("/c", Range=f"bytes={first_byte}-{last_byte}")
    assert (status, body) == (206, BODY[first_byte : last_byte + 1])
    assert got["Content-Range"] == f"bytes {first_byte}-{last_byte}/{len(BODY)}"
    status, got, body = await edge.get("/c", Range="bytes=-100")
    assert (status, body) == (206, BODY[-100:])
    assert origin.hits["/c"] == 1


async def test_cut_chunked_body_is_stored_nowhere(edge: Edge, origin: Origin) -> None:
    hook = Chunked(BODY)
    hook.cut_at = 5 * SLICE + 16 * 1024  # five whole slices, and a piece of the sixth
    origin.on_request = hook
    try:
        status, _, body = await edge.get("/c")
    except aiohttp.ClientPayloadError:
        pass  # cut after its first bytes, as the origin's was
    else:
        assert status == 502, (status, len(body))  # or failed before any byte was sent
    await edge.node.engine.flush()
    assert stored_slices(edge) == []
    assert len(edge.node.store.memory) == 0
    assert edge.node.store.peek_meta("videos|video.test|/c") is None

    hook.cut_at = None
    status, _, body = await edge.get("/c")
    assert (status, body) == (200, BODY)
    assert origin.hits["/c"] == 2
    assert (await edge.get("/c"))[2] == BODY
    assert origin.hits["/c"] == 2


async def test_uncacheable_body_is_held_within_the_bound(
    edge: Edge, origin: Origin, fills: list[tuple[Fill, int]]
) -> None:
    """A body nobody else may read is paced by its one client, and the fill keeps only what it has not sent."""
    origin.on_request = Chunked(BODY, {"Cache-Control": "no-store"})
    status, _, body = await edge.get("/private")
    assert (status, body) == (200, BODY)
    assert max(n for _, n in fills) <= BOUND
    assert stored_slices(edge) == []


async def test_ranged_miss_answered_whole_is_held_within_the_bound(
    edge: Edge, origin: Origin, fills: list[tuple[Fill, int]]
) -> None:
    """A fill asks for a run of slices; an origin that ignores Range sends all of it, and the fill becomes a fill
    of the whole object (not a run holding the whole body)."""
    origin.on_request = Chunked(BODY)
    status, _, body = await edge.get("/c", Range="bytes=0-99")
    assert status in (200, 206)
    assert body == (BODY if status == 200 else BODY[:100])
    assert max(n for _, n in fills) <= BOUND
    await edge.node.engine.flush()
    status, _, body = await edge.get("/c", Range=f"bytes={20 * SLICE}-{20 * SLICE + 9}")
    assert (status, body) == (206, BODY[20 * SLICE : 20 * SLICE + 10])
    assert origin.hits["/c"] == 1


async def test_a_disk_that_falls_behind_pauses_the_fill_at_its_bound(
    edge: Edge, origin: Origin, fills: list[tuple[Fill, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices are let go only once stored: while the disk writes nothing, the fill stops taking the body in at its
    bound (the origin waits on TCP), and goes on once the writes land."""
    origin.on_request = Chunked(BODY)
    store = edge.node.store
    write = type(store).put_slice_disk
    gate, queued = asyncio.Event(), asyncio.Condition()
    pending = 0

    async def held_back(entry_key: str, version: str, index: int, data: bytes) -> bool:
        nonlocal pending
        async with queued:
            pending += 1
            queued.notify_all()
        await gate.wait()
        return await write(store, entry_key, version, index, data)

    monkeypatch.setattr(store, "put_slice_disk", held_back)
    answer = asyncio.ensure_future(edge.get("/c"))
    async with asyncio.timeout(10), queued:  # slices must go to the disk while the body still arrives
        await queued.wait_for(lambda: pending >= UNKNOWN_WINDOW + 1)
    fill = fills[-1][0]
    assert fill.received <= BOUND
    gate.set()
    status, _, body = await answer
    assert (status, body) == (200, BODY)
    assert max(n for _, n in fills) <= BOUND
    assert fill.peak <= BOUND
    await edge.node.engine.flush()
    assert (await edge.get("/c"))[2] == BODY
    assert origin.hits["/c"] == 1


async def test_a_stream_behind_a_chunked_fill_widens_its_window_while_fill_memory_has_room(
    edge: Edge, origin: Origin, fills: list[tuple[Fill, int]]
) -> None:
    """A body of unknown length keeps one slice behind its newest for streams that lag, and is never fetched again
    by range: a slice let go before a stream read it had to come back from the store, and one the store no longer
    had cut that stream (a prober's slow reader, its disk budget lowered by a full filesystem). The window grows
    back to WINDOW for a stream behind it, as far as fill memory has room, and that memory is given back after."""
    # far more than the sockets between the node and its client hold; made off the loop (12.5 MiB: 50 ms here)
    body = await asyncio.to_thread(os.urandom, 200 * SLICE)
    origin.on_request = hook = Chunked(body)
    hook.hold_at = 150 * SLICE
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /c HTTP/1.1\r\nHost: video.test\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    async with asyncio.timeout(10):  # the client reads nothing more until the fill has gone on far past it
        await hook.holding.wait()
    await edge.node.engine.flush()
    fill = fills[-1][0]
    assert fill.window == WINDOW
    assert fill.grown == (WINDOW - UNKNOWN_WINDOW) * SLICE
    hook.go.set()
    got = bytearray()
    while chunk := await reader.read(2**20):  # chunked framing: the body's bytes are in order among the sizes
        got += chunk
        if got.endswith(b"\r\n0\r\n\r\n"):
            break
    writer.close()
    assert body[-1000:] in bytes(got)
    # The fill's memory is given back once its writes land, by a task the fill's own end starts.
    while pending := [t for t in edge.node.engine._tasks if not t.done()]:
        await asyncio.gather(*pending, return_exceptions=True)
    await edge.node.engine.flush()
    assert (edge.node.engine.budget.shared.held, fill.grown) == (0, 0)
    assert origin.hits["/c"] == 1


async def test_an_uncacheable_fill_stops_when_its_client_leaves(edge: Edge, origin: Origin) -> None:
    """A fill nobody else may read waits for its one client; once that client is gone it ends, and with it the
    origin request, instead of waiting for a reader forever."""
    origin.on_request = Chunked(BODY * 4, {"Cache-Control": "no-store"})
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /private HTTP/1.1\r\nHost: video.test\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await reader.readexactly(SLICE)
    writer.transport.abort()  # gone without reading the rest
    fills = list(edge.node.engine._tasks)
    assert len(fills) == 1
    async with asyncio.timeout(10):
        await asyncio.gather(*fills, return_exceptions=True)
    assert fills[0].done()


async def test_a_background_revalidation_answered_uncacheable_ends(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revalidation in the background streams to nobody: an answer that cannot be stored ends it at once rather
    than leaving it waiting, with its origin connection, for a reader that never comes."""
    origin.put("/swr", b"old body", etag=None, last_modified=None, headers={"Cache-Control": SWR})
    assert (await edge.get("/swr"))[2] == b"old body"
    await edge.node.engine.flush()
    origin.on_request = Chunked(BODY, {"Cache-Control": "no-store"})
    later = time.time() + 30
    monkeypatch.setattr(time, "time", lambda: later)
    status, headers, body = await edge.get("/swr")
    assert (status, body) == (200, b"old body")
    assert "stale" in headers["Cache-Status"]
    fills = list(edge.node.engine._tasks)
    assert len(fills) == 1
    async with asyncio.timeout(10):
        await asyncio.gather(*fills, return_exceptions=True)
    assert origin.hits["/swr"] == 2


async def test_two_chunked_bodies_cut_at_once_are_both_dropped(edge: Edge, origin: Origin) -> None:
    """Each cut fill waits for its own disk writes only: waiting for every write in flight, two fills cut in the
    same turn waited for each other, and flush() (the drain at a stop) never returned."""
    hook = Chunked(BODY)
    hook.cut_at = 3 * SLICE + 1024
    origin.on_request = hook

    async def cut(path: str) -> None:
        try:
            status, _, _ = await edge.get(path)
        except aiohttp.ClientPayloadError:
            return
        assert status == 502

    await asyncio.gather(cut("/c1"), cut("/c2"))
    async with asyncio.timeout(10):
        await edge.node.engine.flush()
    assert stored_slices(edge) == []
    assert len(edge.node.store.memory) == 0
    assert origin.hits["/c1"] == origin.hits["/c2"] == 1


async def test_a_malformed_chunk_mid_body_ends_the_fill(edge: Edge, origin: Origin) -> None:
    """aiohttp's parser, failing on a chunk size mid-body, drops the body's reader without telling it: a fill
    waiting for more waited forever (its read timeout cancelled), its client with it, and every later request of
    the object joined that fill. The reader must fail, the client's answer be cut, and the next one fetch again."""
    go = asyncio.Event()

    async def malformed(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600", "ETag": '"c1"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(BODY[:SLICE])
        await go.wait()
        assert request.transport is not None
        request.transport.write(b"zz\r\nnot a chunk\r\n")  # a chunk size that is not hex
        return resp

    origin.on_request = malformed
    async with asyncio.timeout(10):
        async with edge.session.get(edge.url + "/c", headers={"Host": "video.test"}) as r:
            assert r.status == 200
            assert await r.content.readexactly(SLICE) == BODY[:SLICE]
            go.set()  # the fill has passed the first chunk on: it waits for more
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        await edge.node.engine.flush()
    assert stored_slices(edge) == []

    origin.on_request = Chunked(BODY)
    async with asyncio.timeout(10):
        status, _, body = await edge.get("/c")
    assert (status, body) == (200, BODY)
    assert origin.hits["/c"] == 2


@pytest.mark.parametrize("held", [True, False], ids=["stream-first", "fill-first"])
async def test_a_stream_behind_a_fill_whose_slices_the_disk_refused_gets_the_whole_body(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    """A slice the disk refused (full, out of service, its admission) was marked stored all the same: the fill let
    it go behind its window, and a stream behind it, which reads such a slice back from the store, found it
    nowhere and was cut (a slow client of a chunked 24 MiB body with the disk out of service: 4,175,847 bytes, then
    'fill dropped bytes its reader still needed'). The fill now holds a refused slice until every stream has read
    it: the slowest stream paces it, within its bound. Not `held` (the origin sends on before the client has its
    head), the fill was past its first slices before the request that started it began its stream, and let them go
    as if no stream were to come: a 502, 'fill dropped bytes its reader still needed'. A request still to stream a
    body of unknown length is counted at its first byte (proxy.expecting)."""
    # far more than the sockets between the node and its client hold; made off the loop (12.5 MiB: 50 ms here)
    body = await asyncio.to_thread(os.urandom, 200 * SLICE)
    origin.on_request = hook = Chunked(body)
    if held:
        hook.hold_at = SLICE  # until the client has its head: its stream reads the fill from then on
    store = edge.node.store

    async def refused(entry_key: str, version: str, index: int, data: bytes) -> bool:
        return False  # what Store.put_slice_disk answers when the disk did not store the slice

    monkeypatch.setattr(store, "put_slice_disk", refused)
    monkeypatch.setattr(store, "put_slice_memory", lambda *_: None)  # a busy node's memory tier evicts them at once
    moved = asyncio.Condition()
    room = Fill.room

    async def watched(self: Fill) -> None:
        async with moved:
            moved.notify_all()
        await room(self)

    monkeypatch.setattr(Fill, "room", watched)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /c HTTP/1.1\r\nHost: video.test\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    hook.go.set()
    fill = next(iter(f for fills in edge.node.engine.fills._by_key.values() for f in fills))
    async with asyncio.timeout(10), moved:  # the client reads nothing until the fill is past it, or waits for it
        await moved.wait_for(lambda: fill.done or fill._held + fill.slice_size > fill.bound)
    got = bytearray()
    async with asyncio.timeout(10):
        while chunk := await reader.read(2**20):
            got += chunk
            if got.endswith(b"\r\n0\r\n\r\n"):
                break
    writer.close()
    assert got.endswith(b"\r\n0\r\n\r\n"), f"cut after {len(got)} bytes"
    framed = bytes(got)
    decoded = bytearray()
    while (eol := framed.index(b"\r\n")) and (size := int(framed[:eol], 16)):
        decoded += framed[eol + 2 : eol + 2 + size]
        framed = framed[eol + 2 + size + 2 :]
    assert bytes(decoded) == body
    assert origin.hits["/c"] == 1
