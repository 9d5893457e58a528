"""Faults from the origin and the disk: never a wrong byte served, never a broken response stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes

MiB = 2**20
DATA = bytes(range(256)) * (3 * MiB // 256)


def cut_after(n: int, status: int = 200, content_range: str | None = None, etag: bool = True):  # type: ignore[no-untyped-def]
    """An origin handler that announces the whole body and then closes the connection after n bytes."""

    async def handler(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Cache-Control": "max-age=60"})
        if etag:
            resp.headers["ETag"] = '"cut"'
        if content_range:
            resp.headers["Content-Range"] = content_range
        resp.content_length = MiB if content_range else len(DATA)
        await resp.prepare(request)
        await resp.write(DATA[:n])
        assert request.transport is not None
        request.transport.close()
        return resp

    return handler


async def fetch(edge: Edge, path: str, **headers: str) -> tuple[int, bytes | None]:
    """The status and body, or None for the body when the response was cut short."""
    try:
        async with edge.session.get(edge.url + path, headers={"Host": "video.test", **headers}) as r:
            return r.status, await r.read()
    except aiohttp.ClientPayloadError:
        return 200, None


async def test_body_cut_mid_slice_is_aborted_and_not_stored(edge: Edge, origin: Origin) -> None:
    origin.on_request = cut_after(MiB + 1000)
    status, body = await fetch(edge, "/cut")
    assert body is None or body == DATA  # aborted, never short or padded
    assert body is None
    origin.on_request = None
    origin.put("/cut", DATA, etag='"cut"')
    status, body = await fetch(edge, "/cut")
    assert (status, body) == (200, DATA)
    # Slice 0 was complete and consistent with its validators, so it may have been kept; slice 1 was cut and
    # must have been fetched again: exactly one more origin request served the rest.
    assert origin.hits["/cut"] == 2


async def test_a_cut_body_without_validators_costs_the_origin_one_request_a_request(edge: Edge, origin: Origin) -> None:
    """An object with no validator is only ever fetched whole (nothing proves two fetches the same version). Its
    copy, stored at the head, stayed without the rest of its body: each later request met it, fetched the object
    again (another version), and tried again, 5 origin requests for one 502."""
    origin.on_request = cut_after(50_000, etag=False)
    for n in (1, 2, 3):
        status, body = await fetch(edge, "/nv")
        assert (status, origin.hits["/nv"]) == (502, n)
        assert body == (
            b"origin failed: origin body broken: Response payload is not completed: <ContentLengthError: 400, "
            b"message='Not enough data to satisfy content length header (received 50000 of 3145728 bytes).'>\n"
        )
    origin.on_request = None
    origin.put("/nv", DATA, etag=None, last_modified=None)
    for _ in range(2):
        assert await fetch(edge, "/nv") == (200, DATA)
        assert origin.hits["/nv"] == 4


async def test_wrong_content_range_is_refused(edge: Edge, origin: Origin) -> None:
    async def wrong(request: web.BaseRequest, obj: object) -> web.Response:
        return web.Response(
            status=206,
            body=DATA[5 : 5 + MiB],
            headers={"Content-Range": f"bytes 5-{MiB + 4}/{len(DATA)}", "ETag": '"w"', "Cache-Control": "max-age=60"},
        )

    origin.on_request = wrong
    before = fast_path_outcomes()["handed_off"]
    for _ in range(2):
        status, body = await fetch(edge, "/wrong", Range="bytes=0-99")
        # The 206 is not for the range asked: it fills nothing; the client's own range is asked again and passed on.
        assert status == 206
        assert body == DATA[5 : 5 + MiB]
        assert edge.node.store.peek_meta("videos|video.test|/wrong") is None
    assert origin.range_hits("/wrong") == ["bytes=0-1048575", "bytes=0-99"] * 2
    assert fast_path_outcomes()["handed_off"] == before  # the fast path's pass-through (none counted off it)


async def test_more_bytes_than_content_length_are_never_served(edge: Edge, origin: Origin) -> None:
    async def longer(request: web.BaseRequest, obj: object) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"ETag": '"l"', "Cache-Control": "max-age=60"})
        resp.content_length = 1000
        await resp.prepare(request)
        assert request.transport is not None
        request.transport.write(b"x" * 1500)  # behind aiohttp's back: 500 bytes too many on the wire
        request.transport.close()
        return resp

    origin.on_request = longer
    status, body = await fetch(edge, "/longer")
    # Either the announced 1000 bytes exactly, or a refusal: never the 500 extra bytes.
    assert (status, body) in ((200, b"x" * 1000), (502, body))
    assert body is not None
    assert len(body) <= 1000
    origin.on_request = None
    origin.put("/longer", b"y" * 1000, etag='"l2"')
    assert (await fetch(edge, "/longer"))[1] in (b"x" * 1000, b"y" * 1000)


def partition(asked: list[str | None]) -> list[tuple[int, int]]:
    """The byte ranges asked, merged if and only if they follow each other exactly (no gap, no overlap)."""
    spans = sorted((int(a), int(b)) for r in asked for a, b in [(r or "bytes=-").removeprefix("bytes=").split("-")])
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and merged[-1][1] + 1 == first:
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_disk_files_corrupted_or_deleted_underneath(origin: Origin, tmp_path: Path, fast: bool) -> None:
    from dataclasses import replace

    origin.put("/d.bin", DATA)
    cfg = make_config(tmp_path / "c", [origin.url], memory_bytes=MiB // 2)  # slices live on disk only
    async with start_edge(replace(cfg, fast_path=fast)) as edge:
        assert (await fetch(edge, "/d.bin"))[1] == DATA
        await edge.node.engine.flush()  # every slice is on disk before it is damaged
        files = sorted(p for p in (tmp_path / "c").rglob("*.val"))
        assert len(files) == 3  # three slices, one file each
        files[0].write_bytes(files[0].read_bytes()[:1000])  # truncated underneath
        files[1].unlink()  # deleted underneath
        flipped = bytearray(files[2].read_bytes())
        flipped[1234] ^= 0xFF
        files[2].write_bytes(bytes(flipped))  # same length, one byte changed: only the checksum can tell
        for _ in range(2):
            status, body = await fetch(edge, "/d.bin")
            assert (status, body) == (200, DATA)
        # The three damaged slices were fetched again, once each: one request for the run of them on the fast
        # path (it gathers every slice before it answers), one each on the full handler's (it finds them in turn).
        # As one run or slice by slice (the fast path gathers every slice before it answers, the full handler finds
        # them in turn, and which damage shows first varies): each slice once, nothing else.
        asked = origin.range_hits("/d.bin")
        assert partition(asked[1:]) == [(0, len(DATA) - 1)], asked
        await edge.node.engine.flush()
        files = sorted(p for p in (tmp_path / "c").rglob("*.val"))
        for f in files:  # damaged again, in place, while the fast path may hold them open
            data = bytearray(f.read_bytes())
            data[7] ^= 0xFF
            f.write_bytes(bytes(data))
        before = len(origin.range_hits("/d.bin"))
        assert await fetch(edge, "/d.bin") == (200, DATA)
        asked = origin.range_hits("/d.bin")
        assert partition(asked[before:]) == [(0, len(DATA) - 1)], asked


async def test_origin_timeout_is_a_quick_504(origin: Origin, tmp_path: Path) -> None:
    from dataclasses import replace

    hold = asyncio.Event()

    async def never(request: web.BaseRequest, obj: object) -> web.Response:
        await hold.wait()
        return web.Response(text="late")

    origin.on_request = never
    cfg = make_config(tmp_path / "c", [origin.url])
    cfg = replace(cfg, origin=replace(cfg.origin, read_timeout=0.5))
    try:
        async with start_edge(cfg) as edge:
            status, body = await fetch(edge, "/slow")
            assert status == 504
            assert body is not None
            assert body.startswith(b"origin failed: ")
    finally:
        hold.set()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "framework"])
async def test_an_origin_that_sends_its_head_a_byte_at_a_time_is_a_504_within_the_read_timeout(
    tmp_path: Path, fast_path: bool
) -> None:
    """Each byte came within the read timeout and restarted it: a fill waited for as long as the origin went on,
    and every viewer of the object with it."""
    from dataclasses import replace

    handlers: set[asyncio.Task[None]] = set()

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(dribble, "127.0.0.1", 0)
    cfg = make_config(tmp_path / "c", [f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"])
    # A head is waited for connect_timeout + read_timeout (proxy.origin): both short, the connect a loopback one.
    origin = replace(cfg.origin, connect_timeout=0.5, read_timeout=0.5)
    cfg = replace(cfg, origin=origin, fast_path=fast_path)
    try:
        async with start_edge(cfg) as edge:
            for path in ("/a", "/b"):  # twice: nothing left behind
                async with asyncio.timeout(5):
                    status, body = await fetch(edge, path)
                assert status == 504
                assert body is not None
                assert body.startswith(b"origin failed: "), body
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
