"""A fill of a whole object runs while a client reads it: once none does, it ends at the next slice boundary (every
slice complete so far stored, whole and checked) and lets its origin connection go, as nginx's slice module and ATS
do, instead of fetching a multi-GB object, or an endless body, for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgecache.proxy import coldmiss
from edgecache.proxy.fill import Fill
from edgecache.proxy.handler import EdgeHandler
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
PIECE = 16 * 1024


async def _noise(size: int) -> bytes:
    """64 MiB of random bytes take hundreds of ms on a loaded machine: made off the loop, whose stall guard watches."""
    return await asyncio.to_thread(os.urandom, size)


class Paced:
    """Origin hook: a 200 of `size` bytes (with a Content-Length, or chunked when `length` is False), 16 KiB at a
    time, held after `hold_at` bytes until `go` is set; it counts what it wrote and stops once the edge has gone."""

    def __init__(
        self, size: int, hold_at: int, length: bool = True, data: bytes = b"", fields: dict[str, str] | None = None
    ) -> None:
        self.data = data
        self.size, self.hold_at, self.length = size, hold_at, length
        self.fields = fields or {"Cache-Control": "public, max-age=3600", "ETag": '"p1"'}
        self.go = asyncio.Event()
        self.written = 0
        self.ended = asyncio.Event()

    def piece(self, at: int) -> bytes:
        return self.data[at : at + PIECE] if self.length else bytes([at // PIECE % 251]) * PIECE

    async def __call__(self, request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={**self.fields, "Content-Type": "application/octet-stream"})
        if self.length:
            resp.content_length = self.size
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for at in range(0, self.size, PIECE):
                if at == self.hold_at:
                    await self.go.wait()
                await resp.write(self.piece(at))
                self.written += PIECE
            await resp.write_eof()
        except ConnectionError:
            pass  # the edge let the connection go
        finally:
            self.ended.set()
        return resp


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE, disk_bytes=4096 * SLICE)
    # Paced ignores Range: its 64 MiB are a copy taken only whole, stored up to cache.max_object_size.
    config = replace(config, cache=replace(config.cache, max_object_size=1024 * SLICE))
    async with start_edge(replace(config, fast_path=request.param == "fast")) as e:
        yield e


async def _leave_after(edge: Edge, path: str, nbytes: int) -> None:
    """A client that asks for `path` whole, reads the head and `nbytes` of the body, and goes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await reader.readexactly(nbytes)
    writer.transport.abort()


def _stored(edge: Edge) -> int:
    tiers = [slot.tier for slot in edge.node.store.disk._slots if slot.tier is not None]
    return sum(1 for tier in tiers for k in tier._cache.iterkeys() if str(k).startswith("s:"))


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_a_whole_object_fill_stops_once_its_client_has_left(edge: Edge, origin: Origin, length: bool) -> None:
    size = 1024 * SLICE  # 64 MiB; a chunked one is an endless body as far as the client's visit goes
    hook = Paced(size, 8 * SLICE, length, await _noise(size) if length else b"")
    origin.on_request = hook
    await _leave_after(edge, "/big", 2 * SLICE)
    fills = list(edge.node.engine._tasks)
    assert len(fills) == 1
    hook.go.set()
    async with asyncio.timeout(20):
        await asyncio.gather(*fills, return_exceptions=True)
        await hook.ended.wait()  # the origin connection went with the fill
        await edge.node.engine.flush()
    assert hook.written < size // 4
    stored = _stored(edge)
    if length:  # complete slices are kept, and the next request has the rest fetched: whole and exact
        assert 8 <= stored < 1024 // 4
        status, _, body = await edge.get("/big")
        assert (status, len(body), body == hook.data) == (200, size, True)
    else:  # a body of unknown length that never ended is no object: nothing of it is kept
        assert stored == 0


@pytest.fixture(params=["fast", "framework"])
async def small(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    """An edge whose disk holds 256 slices: a body of unknown length is stored up to an eighth of it, 32 slices."""
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE, disk_bytes=256 * SLICE)
    async with start_edge(replace(config, fast_path=request.param == "fast")) as e:
        yield e


async def test_a_body_of_unknown_length_is_stored_up_to_a_bound(small: Edge, origin: Origin) -> None:
    """A chunked body past an eighth of the disk budget is served to its clients whole but never stored: its slices
    so far are dropped, and no more are written, so that one endless body cannot evict the whole cache."""
    size = 96 * SLICE
    hook = Paced(size, size, length=False)
    origin.on_request = hook
    want = b"".join(hook.piece(at) for at in range(0, size, PIECE))
    writes = 0
    put = small.node.store.put_slice_disk

    async def counted(entry_key: str, version: str, index: int, data: bytes) -> bool:
        nonlocal writes
        writes += 1
        return await put(entry_key, version, index, data)

    small.node.store.put_slice_disk = counted  # type: ignore[method-assign]
    for n in (1, 2):
        async with asyncio.timeout(20):
            status, _, body = await small.get("/endless")
            assert (status, len(body), body == want) == (200, size, True)
            await asyncio.gather(*small.node.engine._tasks, return_exceptions=True)
            await small.node.engine.flush()
        assert origin.hits["/endless"] == n  # never stored, so never a hit: asked again
        assert _stored(small) == 0
    assert writes <= 2 * 32


class Unvalidated:
    """Origin hook: a 200 of `data` with neither validator nor Cache-Control (stored, stale at once, fetched whole
    each time: a new copy), 16 KiB at a time. From its second request on, the head waits for `joined` and the body
    for `go` after its first 16 KiB."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.joined = asyncio.Event()
        self.go = asyncio.Event()
        self.asked = 0

    async def __call__(self, request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        self.asked += 1
        held = self.asked > 1
        if held:
            await self.joined.wait()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(self.data)
        await resp.prepare(request)
        for at in range(0, len(self.data), PIECE):
            if held and at == PIECE:
                await self.go.wait()
            await resp.write(self.data[at : at + PIECE])
        await resp.write_eof()
        return resp


async def test_a_request_that_joined_a_whole_fill_is_its_reader_before_it_reads(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that joined a fill of the whole object counted as its reader only once it read: the request that
    started it (a Range within the first slice) read and left meanwhile, and the fill ended at the next slice
    boundary, nobody reading. A copy with no validator is never completed by another fetch (each is another copy),
    so the joiner's 200 was cut after its first slice (the fuzzing prober: 2 to 5 answers of 80, 'origin now has
    copy u:X, serving u:Y'). It is counted from the moment it joins until it reads, or leaves."""
    data = os.urandom(8 * SLICE + 17)  # past the first boundary, more than a run of slices (fill_slices) is left
    origin.on_request = hook = Unvalidated(data)
    assert (await edge.get("/n"))[::2] == (200, data)  # stored whole, stale at once
    engine = edge.node.engine
    joins = 0
    fill_for = engine.fill_for

    def counted(*args: Any, **kw: Any) -> Any:
        nonlocal joins
        joins += 1
        if joins == 2:  # the whole GET joined the Range's fill before its head came
            hook.joined.set()
        return fill_for(*args, **kw)

    monkeypatch.setattr(engine, "fill_for", counted)
    left = asyncio.Event()
    reading = engine.reading

    @contextlib.contextmanager
    def watched(entry_key: str) -> Iterator[None]:
        with reading(entry_key):
            yield
        left.set()

    monkeypatch.setattr(engine, "reading", watched)
    # The whole GET is held between its join and its first read until the fill is done (stopped, or whole).
    head_in, head_of = coldmiss._head_in, EdgeHandler._head_of

    async def slow_head_in(conn: Any, started: coldmiss.Started) -> None:
        await head_in(conn, started)
        if b"Range" not in started.head:
            await _until_done(started.fill)

    async def slow_head_of(self: EdgeHandler, request: web.BaseRequest, req: Any, fill: Fill, *rest: Any) -> Any:
        head = await head_of(self, request, req, fill, *rest)
        if "Range" not in request.headers:
            await _until_done(fill)
        return head

    monkeypatch.setattr(coldmiss, "_head_in", slow_head_in)
    monkeypatch.setattr(EdgeHandler, "_head_of", slow_head_of)
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /n HTTP/1.1\r\nHost: video.test\r\nRange: bytes=0-99\r\n\r\n")
        whole = asyncio.ensure_future(edge.get("/n"))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 206 ")
        assert await reader.readexactly(100) == data[:100]
        while engine._reading:  # the Range's answer is out (from the fill, or from memory): nobody reads now
            left.clear()
            await left.wait()
        writer.close()
        hook.go.set()
        status, _, body = await whole
    assert (status, len(body), body == data) == (200, len(data), True)
    assert origin.hits["/n"] == 2


async def _until_done(fill: Fill) -> None:
    while not fill.done:
        await fill._changed.wait()


async def test_a_request_that_joined_a_whole_fill_and_left_before_reading_lets_it_stop(
    edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of counting a request from its join: one that leaves before it reads is counted no more, so the
    fill still ends at a slice boundary once its last reader has gone, and gives its fill memory back."""
    size = 1024 * SLICE
    hook = Paced(size, 8 * SLICE, data=await _noise(size))
    joined, gone = asyncio.Event(), asyncio.Event()

    async def after_the_join(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        await joined.wait()  # the head comes once the second request has joined the fill
        return await hook(request, obj)

    origin.on_request = after_the_join
    engine = edge.node.engine
    fill_for = engine.fill_for

    def counted(*args: Any, **kw: Any) -> Any:
        got = fill_for(*args, **kw)
        if not got[1]:
            joined.set()
        return got

    monkeypatch.setattr(engine, "fill_for", counted)
    head_in, head_of = coldmiss._head_in, EdgeHandler._head_of

    async def held_in(conn: Any, started: coldmiss.Started) -> None:
        await head_in(conn, started)
        if b"X-Held" in started.head:
            await gone.wait()

    async def held_of(self: EdgeHandler, request: web.BaseRequest, req: Any, fill: Fill, *rest: Any) -> Any:
        head = await head_of(self, request, req, fill, *rest)
        if "X-Held" in request.headers:
            await gone.wait()
        return head

    monkeypatch.setattr(coldmiss, "_head_in", held_in)
    monkeypatch.setattr(EdgeHandler, "_head_of", held_of)
    async with asyncio.timeout(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: video.test\r\n\r\n")
        _, joiner = await asyncio.open_connection("127.0.0.1", edge.port)
        joiner.write(b"GET /big HTTP/1.1\r\nHost: video.test\r\nX-Held: 1\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        joiner.transport.abort()  # joined, and gone before reading a byte
        gone.set()
        assert await reader.readexactly(2 * SLICE) == hook.data[: 2 * SLICE]
        writer.transport.abort()
        fills = list(engine._tasks)
        hook.go.set()
        await asyncio.gather(*fills, return_exceptions=True)
        await hook.ended.wait()
        await engine.flush()
    assert hook.written < size // 4
    assert origin.hits["/big"] == 1
    assert engine.budget.shared.held == 0
