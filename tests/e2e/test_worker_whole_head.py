"""A copy stored only whole (no validator) missed by a second worker before the first stored its head.

Worker B's miss that came while A's origin request had no head yet waited on the entry's lease
(revalidating.by_another_worker), which A holds until its whole body is stored (holds_to_the_end): B's first byte came
only after A's last, and for a body slower than a lease (LEASE_SECONDS) B gave up and fetched the object again. B's
wait ends at A's head now (the copy's metadata is on the disk from its head on: leasing.claimed), and B follows A's
body slice by slice as it lands, as a reader that found the copy does (revalidating.whole_by_another_worker).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgecache.storage.leases import LEASE_SECONDS
from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.e2e.test_worker_whole_copy import BODY
from tests.e2e.test_workers import MiB
from tests.origin import Origin

# How B is answered: the fast path, the full handler (a request the fast path leaves to it: a Connection field naming
# another), or a node without the fast path. Each reads the first byte of the first slice it lacks before it sends
# the head (diskhit._partial, serving.first_fetched): B's head comes once A has stored that slice, not its body.
WAYS = {
    "fast-path": ("", True),
    "full-handler": ("Connection: X-Player\r\nX-Player: 1\r\n", True),
    "no-fast-path": ("", False),
}
# Where the origin's answer stops until the test lets it go on: its head; half of slice 0; half of slice 1.
STOPS = (0, MiB // 2, MiB + MiB // 2)


def held_in_stages(origin: Origin, path: str, go: list[asyncio.Event]) -> None:
    """The origin's first answer for `path`: nothing until go[0] is set, then its head and its body up to STOPS[1];
    on to STOPS[2] once go[1] is set; the rest once go[2] is."""

    async def held(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        await go[0].wait()
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        for at, upto, event in zip(STOPS[:-1], STOPS[1:], go[1:], strict=True):
            await resp.write(BODY[at:upto])
            await event.wait()
        await resp.write(BODY[STOPS[-1] :])
        await resp.write_eof()
        return resp

    origin.on_request = held


async def waited_once_more(origin: Origin, s: aiohttp.ClientSession, admin: int, waits: float) -> float:
    """Until a request waits on another worker's origin request once more than `waits` (or the origin was asked
    a second time); the count of those waits then."""
    while (now := await collapsed(s, admin)) == waits and origin.hits["/p.bin"] == 1:  # noqa: ASYNC110 (polled)
        await asyncio.sleep(0.02)
    return now


@pytest.mark.parametrize("way", list(WAYS))
async def test_a_miss_before_the_other_workers_head_streams_its_whole_copy_as_it_lands(
    origin: Origin, tmp_path: Path, way: str
) -> None:
    """A asks; the origin holds its head. B asks and waits on A's lease. The origin sends the head and half of
    slice 0: B waits for that slice (before: for A's lease, to A's last byte or LEASE_SECONDS, then asked the origin
    itself). The origin brings slice 0 and half of slice 1, and holds the rest: B's viewer gets its head and slice 0
    while the origin holds. Both answers exact, one origin request."""
    extra, fast_path = WAYS[way]
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go = [asyncio.Event() for _ in STOPS]
    held_in_stages(origin, "/p.bin", go)
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], 1, fast_path) as (admin, s, [(a, b)]):
        try:
            seen, waits = len(origin.seen), await collapsed(s, admin)
            first = asyncio.ensure_future(a.get("/p.bin"))
            async with asyncio.timeout(20):
                await origin.wait_for_requests(seen + 1)
                b.writer.write(f"GET /p.bin HTTP/1.1\r\nHost: video.test\r\n{extra}\r\n".encode())
                waits = await waited_once_more(origin, s, admin, waits)  # B waits on A's origin request
            go[0].set()
            async with asyncio.timeout(LEASE_SECONDS / 2):
                await waited_once_more(origin, s, admin, waits)  # B waits for slice 0, not for A's lease
            assert origin.hits["/p.bin"] == 1
            go[1].set()
            async with asyncio.timeout(LEASE_SECONDS / 2):  # B does not wait for A's body, nor the lease's time
                got = await b.reader.readuntil(b"\r\n\r\n")
                begun = await b.reader.readexactly(MiB)
            assert not go[2].is_set()
        finally:
            for event in go:
                event.set()
        async with asyncio.timeout(30):
            status, _, data = await first
            tail = await b.reader.readexactly(len(BODY) - MiB)
        assert got.startswith(b"HTTP/1.1 200 ")
        assert f"\r\nContent-Length: {len(BODY)}\r\n".encode() in got
        assert (status, data == BODY, begun + tail == BODY) == (200, True, True)
        assert origin.hits["/p.bin"] == 1
