"""A client streaming a stored copy of an object, while the object is filled again as another copy of the same
bytes: its metadata gone meanwhile (evicted from both tiers, or another worker's copy read back from the shared
disk), the next miss names a new copy (a new token). A slice the reader then needs comes from a fill of that copy.
Under the same strong ETag and length those are the same bytes, and the reader is served them; under a weak ETag
(the version is Last-Modified and the length) nothing says they are, and the reader is cut, never mixed.

A soak saw 9 answers in about 140,000 cut so, mid-body, with "origin now has version e:"e8-1200000", serving
e:"e8-1200000"": the message named the versions without the tokens that differed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import make_config, start_edge
from tests.origin import Obj, Origin

MiB = 2**20
DATA = bytes((i * 13 + i // 7919) % 256 for i in range(3 * MiB + 100))
KEY = "videos|video.test|/copy.bin"


def slice_one_held(origin: Origin, go_on: asyncio.Event) -> None:
    """The origin's answer to the first fill of slice 1: its head and 256 KiB, then the rest once `go_on` is set."""
    held = [True]

    async def hook(request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse | None:
        if obj is None or request.headers.get("Range") != f"bytes={MiB}-{2 * MiB - 1}" or not held[0]:
            return None
        held[0] = False
        fields = {"ETag": obj.etag or "", "Last-Modified": obj.last_modified or "", **obj.headers}
        fields["Content-Range"] = f"bytes {MiB}-{2 * MiB - 1}/{len(DATA)}"
        resp = web.StreamResponse(status=206, headers=fields)
        resp.content_length = MiB
        await resp.prepare(request)
        await resp.write(DATA[MiB : MiB + 256 * 1024])
        await go_on.wait()
        await resp.write(DATA[MiB + 256 * 1024 : 2 * MiB])
        await resp.write_eof()
        return resp

    origin.on_request = hook


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
@pytest.mark.parametrize("etag", ['"e8-3145828"', 'W/"e8-3145828"'], ids=["strong", "weak"])
@pytest.mark.parametrize("tiers", ["inclusive", "exclusive"])
async def test_a_reader_of_a_copy_is_not_cut_by_a_new_copy_of_the_same_bytes(
    origin: Origin, tmp_path: Path, fast: bool, etag: str, tiers: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With exclusive tiers the fill's slice is stored (in memory) as soon as it is complete, and the fill lets it
    go when it ends, before the reader of the other copy has read it: the reader was cut ("slice 2 could not be
    read"), looking for it under its own copy's name only."""
    origin.put("/copy.bin", DATA, etag=etag)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1), fast_path=fast)
    config = replace(config, cache=replace(config.cache, tiers=tiers))
    async with start_edge(config) as edge:
        status, _, body = await edge.get("/copy.bin", Range="bytes=0-9")  # the copy: its metadata and slice 0
        assert (status, body) == (206, DATA[:10])
        await edge.node.engine.flush()
        old = edge.node.store.peek_meta(KEY)
        assert old is not None
        go_on = asyncio.Event()
        slice_one_held(origin, go_on)
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(b"GET /copy.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert f"Content-Length: {len(DATA)}\r\n".encode() in head
            got = await reader.readexactly(MiB + 1000)  # slice 0, and slice 1 up to where its fill is held
            assert got == DATA[: MiB + 1000]
            await edge.node.store.delete_meta(KEY)  # the copy's metadata gone: the next miss is a new copy
            status, _, body = await edge.get("/copy.bin", Range=f"bytes={2 * MiB}-{2 * MiB + 9}")
            assert (status, body) == (206, DATA[2 * MiB : 2 * MiB + 10])
            new = edge.node.store.peek_meta(KEY)
            assert new is not None
            assert (new.version, new.length) == (old.version, old.length)
            assert new.token != old.token
            go_on.set()
            rest = await reader.read(len(DATA))
            while len(got) + len(rest) < len(DATA) and (more := await reader.read(len(DATA))):
                rest += more
            got += rest
        finally:
            writer.close()
        assert got == DATA[: len(got)]  # never another copy's bytes in it
        # Slice 2 twice: for the new copy, then for the reader (read under its own copy's name, not found stored).
        fetched = [f"bytes={i * MiB}-{(i + 1) * MiB - 1}" for i in (0, 1, 2, 2, 3)]
        if etag.startswith("W/"):
            assert len(got) < len(DATA)  # no proof the new copy's slice 2 is the same bytes: cut
            assert origin.range_hits("/copy.bin") == fetched[:4]
            said = f"origin now has copy {new.slice_version} (200), serving {old.slice_version} (200)"
            assert any(said in r.getMessage() for r in caplog.records)  # the tokens that differ, not two equal versions
        else:
            assert got == DATA
            assert origin.range_hits("/copy.bin") == fetched
