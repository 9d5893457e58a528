"""A copy stored only whole (no validator) whose body takes longer than a lease (LEASE_SECONDS) to come: another
worker reading it from the shared disk while it is written (revalidating.whole_by_another_worker) must not take
the lease's expiry for its writer's end, and fetch a copy of its own halfway through its answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from edgecache.storage.leases import LEASE_SECONDS
from tests.e2e.test_worker_revalidation import each_worker
from tests.e2e.test_worker_whole_copy import BODY, b_waits_for_a
from tests.e2e.test_workers import MiB
from tests.origin import Origin

PIECE = 128 * 1024
FIRST = MiB + MiB // 2  # the first slice, and half the next, before the origin slows down
PIECES = (len(BODY) - FIRST) // PIECE
# Between two pieces of the slow part: it lasts longer than a lease, each pause well within the read timeout.
PAUSE = 1.5 * LEASE_SECONDS / PIECES


def slow_after(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path`: FIRST bytes, then, once `go` is set, the rest a PIECE each PAUSE (a
    slow origin, not a synchronisation: the fill outlasts its lease however fast the node is)."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        await resp.write(BODY[:FIRST])
        await go.wait()
        for at in range(FIRST, len(BODY), PIECE):
            await asyncio.sleep(PAUSE)
            await resp.write(BODY[at : at + PIECE])
        await resp.write_eof()
        return resp

    origin.on_request = slow


async def test_a_whole_copy_written_for_longer_than_its_lease_is_read_to_its_end(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker B reads worker A's copy while A writes it, slowly: both answers whole and exact, one origin request.
    Before, A's lease expired mid-body (it was taken for LEASE_SECONDS, never renewed), B took that for A's end,
    asked the origin for a copy of its own, and cut its answer (another copy's bytes are never served for one)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    slow_after(origin, "/p.bin", go)
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1) as (admin, s, [(a, b)]):
        try:
            first, second = await b_waits_for_a(origin, s, admin, a, b)
        finally:
            go.set()
        async with asyncio.timeout(4 * LEASE_SECONDS):
            answers = await asyncio.gather(first, second, return_exceptions=True)
        got = [a if isinstance(a, BaseException) else (a[0], len(a[2]), a[2] == BODY) for a in answers]
        assert got == [(200, len(BODY), True), (200, len(BODY), True)]
        assert origin.hits["/p.bin"] == 1
