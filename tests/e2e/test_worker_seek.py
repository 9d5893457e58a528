"""A seek into a cold object, in the worker already fetching its start, goes to the origin at once.

With several workers on one disk, a cold miss takes the entry's lease before it asks the origin (proxy.revalidating)
so that another worker missing the same object waits for its head instead of asking too. A second range of the same
object in the same worker (a player's seek) is another fill of other slices: waiting for the first fill's head
brings it nothing it needs (no byte of its slices), and cost it a whole first-byte time of the origin.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_cold import WARM
from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

SEEK = 5 * MiB + 1000  # in a slice the first range's fill does not bring


async def test_a_seek_into_a_cold_object_does_not_wait_for_its_own_worker_s_first_range(
    origin: Origin, tmp_path: Path
) -> None:
    """The origin holds the answer to the first range; the seek's request reaches it meanwhile, and neither
    request waited for another's (edgecache_collapsed_waits_total unchanged). Before, the seek waited on the
    first range's entry lease until that answer came (or the lease's 10 s): no second origin request.

    The lease never lapses here (NEVER_LAPSES), and the first answer is held to the end: a seek that waited on it
    would never reach the origin, however slow the machine, so the bound on it is a hang's only."""
    origin.put("/warm", WARM)
    origin.put("/v.bin", DATA)
    held = asyncio.Event()

    async def hold_the_start(request: web.BaseRequest, _obj: object) -> None:
        if request.headers.get("Range", "").startswith("bytes=0-"):
            await held.wait()

    origin.on_request = hold_the_start
    async with each_worker(tmp_path, origin, "/warm", WARM, lease=NEVER_LAPSES) as (admin, s, [(a, _), (c, _)]):
        assert a.pid == c.pid
        seen, waits = len(origin.seen), await collapsed(s, admin)
        start = asyncio.ensure_future(a.get("/v.bin", "Range: bytes=0-99\r\n"))
        try:
            async with asyncio.timeout(20):
                await origin.wait_for_requests(seen + 1)
            seek = asyncio.ensure_future(c.get("/v.bin", f"Range: bytes={SEEK}-{SEEK + 99}\r\n"))
            async with asyncio.timeout(30):  # a hang's bound only: the lease it waited on before would hold an hour
                await origin.wait_for_requests(seen + 2)
            assert await collapsed(s, admin) == waits
        finally:
            held.set()
        async with asyncio.timeout(30):
            answers = await asyncio.gather(start, seek)
        assert [(status, body) for status, _, body in answers] == [(206, DATA[:100]), (206, DATA[SEEK : SEEK + 100])]
        ranges = origin.range_hits("/v.bin")
        assert len(ranges) == 2
        assert ranges[0] is not None
        assert ranges[0].startswith("bytes=0-")
        assert ranges[1] is not None
        assert ranges[1].startswith(f"bytes={5 * MiB}-")
