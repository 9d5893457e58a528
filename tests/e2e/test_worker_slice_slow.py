"""A slice another worker is fetching from an origin slower than a lease (cache.lease): the reader waits for it to
land, while its fetcher is alive and receiving its bytes, instead of asking the origin for it too."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_revalidation import b_waits_on_a, each_worker
from tests.e2e.test_worker_whole_copy import BODY
from tests.e2e.test_worker_whole_slow import LEASE, TRICKLE, TRICKLE_PAUSE, kept_live
from tests.e2e.test_workers import MiB
from tests.origin import Origin

HALF = MiB // 2  # of slice 0, sent at once; the rest once the other worker waits, slower than a lease in all


def trickled_range(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path`, to the Range the node asks: HALF of it, a byte each KEEP until `go`
    (kept_live), then the rest of it a TRICKLE each TRICKLE_PAUSE (a paced origin, not a synchronisation)."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        assert m is not None, request.headers
        first, last = int(m.group(1)), min(int(m.group(2)), len(BODY) - 1)
        headers = {
            "Cache-Control": "public, max-age=3600",
            "ETag": '"v1"',
            "Content-Range": f"bytes {first}-{last}/{len(BODY)}",
        }
        resp = web.StreamResponse(status=206, headers=headers)
        resp.content_length = last + 1 - first
        await resp.prepare(request)
        await resp.write(BODY[first : first + HALF])
        held = await kept_live(resp, BODY, first + HALF, go)
        for at in range(held, last + 1, TRICKLE):
            await asyncio.sleep(TRICKLE_PAUSE)
            await resp.write(BODY[at : min(at + TRICKLE, last + 1)])
        await resp.write_eof()
        return resp

    origin.on_request = slow


async def test_a_slice_that_takes_longer_than_a_lease_to_come_is_fetched_once(origin: Origin, tmp_path: Path) -> None:
    """Worker A's miss of a range fetches slice 0 from an origin that sends half of it, then the rest over longer
    than a lease; worker B asks for the same range meanwhile and waits for A's slice: both answers exact, one
    origin request. Before, A's lease on the slice lapsed a lease after A took it, though A was receiving its
    bytes, and B, its wait over, leased the slice itself and asked the origin for it too (2 origin requests)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/s.bin", BODY)
    go = asyncio.Event()
    trickled_range(origin, "/s.bin", go)
    rng = "Range: bytes=1000-1999\r\n"
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=LEASE) as (admin, s, [(a, b)]):
        answers = await b_waits_on_a(
            s, admin, origin, "/s.bin", (lambda: a.get("/s.bin", rng), lambda: b.get("/s.bin", rng)), go
        )
        got = [x if isinstance(x, BaseException) else (x[0], x[2] == BODY[1000:2000]) for x in answers]
        assert got == [(206, True), (206, True)]
        assert origin.hits["/s.bin"] == 1
