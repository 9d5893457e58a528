"""A copy stored only whole (no validator), written by worker A while worker B's viewer reads it slice by slice from
the shared disk (revalidating.whole_by_another_worker), must not be stopped when A's own viewer leaves.

A fill of the whole object that nobody reads any more ends at the slice boundary it has reached (Engine.unread), as
nginx's slice module ends one: the slices after it are fetched by range when someone asks. Not a copy stored only
whole: nothing can fetch the rest of that copy (another fetch is another copy, whose bytes are never served for it),
and A cannot see B's reader. B's answer, its head and first slices out, was cut: A's viewer leaving broke B's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.e2e.test_worker_whole_copy import memory_slices
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

BODY = DATA[: 10 * MiB]  # past the first slices, more than a run of slices (cache.fill_slices, 4) is left
HELD = MiB + MiB // 2  # sent before the origin holds: slice 0 stored, slice 1 on its way
PIECE, PAUSE, PACED = 64 * 1024, 0.05, 3 * MiB  # then a slow origin for a while (slice 2's boundary), then the rest


def held(origin: Origin, path: str, more: asyncio.Event) -> None:
    """The origin's first answer for `path`: HELD bytes, then, once `more` is set, a PIECE each PAUSE up to PACED
    (a slow origin, not a synchronisation: A's fill meets slice 2's boundary after its viewer's going is noticed,
    as it would at any origin's pace but loopback's), then the rest."""

    async def reply(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        await resp.write(BODY[:HELD])
        await more.wait()
        for at in range(HELD, PACED, PIECE):
            await asyncio.sleep(PAUSE)
            await resp.write(BODY[at : at + PIECE])
        await resp.write(BODY[PACED:])
        await resp.write_eof()
        return resp

    origin.on_request = reply


async def test_a_whole_copy_another_worker_reads_is_written_to_its_end_when_its_own_viewer_leaves(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("/warm", BODY[:1000])
    origin.put("/q.bin", BODY, etag=None, last_modified=None)
    more = asyncio.Event()
    held(origin, "/q.bin", more)
    # The origin is held mid-body while the test polls (up to 20 s): no lease lapses here (NEVER_LAPSES), or B
    # fetches a copy of its own once A's lapsed, as promised.
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        try:
            waits, slices = await collapsed(s, admin), await memory_slices(s, admin)
            a.writer.write(b"GET /q.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
            async with asyncio.timeout(20):
                head_a = await a.reader.readuntil(b"\r\n\r\n")
                await a.reader.readexactly(MiB)  # A's viewer reads slice 0: the fill is attended
                while await memory_slices(s, admin) == slices:  # noqa: ASYNC110 (another process: polled)
                    await asyncio.sleep(0.02)
                b.writer.write(b"GET /q.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110 (B waits for A's slice 1)
                    await asyncio.sleep(0.02)
                a.writer.transport.abort()  # A's viewer leaves (as tests/e2e/test_unread_fills' client does)
        finally:
            more.set()
        async with asyncio.timeout(30):
            head_b = await b.reader.readuntil(b"\r\n\r\n")
            got = await b.reader.readexactly(len(BODY))
        assert head_a.startswith(b"HTTP/1.1 200 ")
        assert head_b.startswith(b"HTTP/1.1 200 ")
        assert f"\r\nContent-Length: {len(BODY)}\r\n".encode() in head_b
        assert got == BODY
        assert origin.hits["/q.bin"] == 1
