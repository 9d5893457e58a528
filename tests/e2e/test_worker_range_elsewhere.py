"""Two workers miss different ranges of an object with no validator at once, its origin honouring Range: the copy
A's range fill writes, stored only whole, holds A's slice alone. B, which waited for A's origin request, may take
that copy only for slices it will hold: a copy being written brings its own fill's slices, not B's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_revalidation import b_waits_on_a, each_worker
from tests.e2e.test_worker_whole_copy import BODY
from tests.origin import Origin

MiB = 2**20
FAR = 3 * MiB  # in the object's fourth slice (cache.slice_bytes 1 MiB): none of A's
LEASE = 4.0  # the node's cache.lease
PIECE = 128 * 1024
PAUSE = 1.5 * LEASE / 4  # the second half of A's slice in 4 pieces: it outlasts a lease (a slow origin, not a sync)


def slow_first(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path` (A's range, slice 0): its head once `go` is set, then half its slice,
    then a PIECE each PAUSE. The others are answered as the origin does (Range honoured)."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        await go.wait()
        resp = web.StreamResponse(status=206, headers={"Cache-Control": "public, max-age=3600"})
        resp.headers["Content-Range"] = f"bytes 0-{MiB - 1}/{len(BODY)}"
        resp.content_length = MiB
        await resp.prepare(request)
        await resp.write(BODY[: MiB // 2])
        for at in range(MiB // 2, MiB, PIECE):
            await asyncio.sleep(PAUSE)
            await resp.write(BODY[at : at + PIECE])
        return resp

    origin.on_request = slow


async def test_another_range_of_an_unversioned_object_is_not_read_from_a_copy_that_never_holds_it(
    origin: Origin, tmp_path: Path
) -> None:
    """A asks for bytes 0-999 and the origin holds its head; B asks for 1,000 bytes of the fourth slice and waits for
    A's origin request (a collapsed wait); A's body then outlasts B's wait of a lease. Both get 206 with the exact
    bytes, and B's request to the origin is for its slice. Before, B took A's copy as being written
    (revalidating._complete, `others`), waited for a slice A never fetches, then asked the origin for the whole
    object (4 MiB for 1,000 bytes; for a video, gigabytes)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/v.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    slow_first(origin, "/v.bin", go)
    near, far = "Range: bytes=0-999\r\n", f"Range: bytes={FAR}-{FAR + 999}\r\n"
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=LEASE) as (admin, s, [(a, b)]):
        asks = (lambda: a.get("/v.bin", near), lambda: b.get("/v.bin", far))
        answers = await b_waits_on_a(s, admin, origin, "/v.bin", asks, go)
        assert [x if isinstance(x, BaseException) else (x[0], x[2]) for x in answers] == [
            (206, BODY[:1000]),
            (206, BODY[FAR : FAR + 1000]),
        ]
        assert origin.range_hits("/v.bin") == [f"bytes=0-{MiB - 1}", f"bytes={FAR}-{FAR + MiB - 1}"]  # B's slice alone
