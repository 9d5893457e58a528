"""A fill of a whole object runs while a client reads it: once none does, it ends at the next slice boundary (every
slice complete so far stored, whole and checked) and lets its origin connection go, as nginx's slice module and ATS
do, instead of fetching a multi-GB object, or an endless body, for nobody."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin

SLICE = 64 * 1024
PIECE = 16 * 1024


class Paced:
    """Origin hook: a 200 of `size` bytes (with a Content-Length, or chunked when `length` is False), 16 KiB at a
    time, held after `hold_at` bytes until `go` is set; it counts what it wrote and stops once the edge has gone."""

    def __init__(self, size: int, hold_at: int, length: bool = True) -> None:
        self.data = os.urandom(size) if length else b""
        self.size, self.hold_at, self.length = size, hold_at, length
        self.go = asyncio.Event()
        self.written = 0
        self.ended = asyncio.Event()

    def piece(self, at: int) -> bytes:
        return self.data[at : at + PIECE] if self.length else bytes([at // PIECE % 251]) * PIECE

    async def __call__(self, request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        fields = {"Cache-Control": "public, max-age=3600", "ETag": '"p1"', "Content-Type": "application/octet-stream"}
        resp = web.StreamResponse(status=200, headers=fields)
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
    hook = Paced(size, 8 * SLICE, length)
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
