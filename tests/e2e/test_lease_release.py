"""A fill that fails lets go of the slices it leased: with several workers, nobody waits for a fetch that ended.

Workers share the disk tier, and a worker fetching slices holds a lease on each (storage.disk.lease) until the slice
is written. A fill cut by the origin (a reset, a short body, a timeout) writes nothing: its leases stayed for their
whole LEASE_SECONDS, and every request for those slices, from any worker (its own too: a lease names no owner),
waited for them in wait_for_peer before fetching: a 5 KiB range took 10 to 20 s under an origin dropping one
connection in seven.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from edgecache.storage.leases import LEASE_SECONDS
from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20
DATA = bytes((i * 7 + i // 1021) % 256 for i in range(3 * MiB + 333))


async def cut_slice_one(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
    """Slice 1's fetch gets its head, then the connection closes."""
    if request.headers.get("Range") != f"bytes={MiB}-{2 * MiB - 1}":
        return None
    resp = web.StreamResponse(status=206, headers={"ETag": '"v1"', "Cache-Control": "public, max-age=3600"})
    resp.headers["Content-Range"] = f"bytes {MiB}-{2 * MiB - 1}/{len(DATA)}"
    resp.content_length = MiB
    await resp.prepare(request)
    assert request.transport is not None
    request.transport.close()
    return resp


async def get(session: aiohttp.ClientSession, url: str, first: int, last: int) -> tuple[int, bytes | None]:
    headers = {"Host": "video.test", "Range": f"bytes={first}-{last}"}
    try:
        async with session.get(url, headers=headers) as r:
            return r.status, await r.read()
    except aiohttp.ClientPayloadError:
        return 206, None  # cut short: visible to the client


async def test_a_failed_fill_lets_go_of_its_leases(origin: Origin, tmp_path: Path) -> None:
    origin.put("/l.bin", DATA)
    config = replace(make_config(tmp_path / "cache", [origin.url], fill_slices=1), workers=2)
    async with start_edge(config) as edge, aiohttp.ClientSession() as session:
        assert edge.node.store.shared  # as in every node of several workers: fills take leases
        url = edge.url + "/l.bin"
        assert await get(session, url, 0, 99) == (206, DATA[:100])
        origin.on_request = cut_slice_one
        async with asyncio.timeout(LEASE_SECONDS / 2):  # the cut fill fails its request at once: a 502
            assert (await get(session, url, MiB + 5, MiB + 99))[0] == 502
        origin.on_request = None
        asked = len(origin.range_hits("/l.bin"))
        # Asked again once the origin is well: fetched at once, not after the cut fill's lease ran out.
        async with asyncio.timeout(LEASE_SECONDS / 2):
            assert await get(session, url, MiB + 5, MiB + 99) == (206, DATA[MiB + 5 : MiB + 100])
        assert origin.range_hits("/l.bin")[asked:] == [f"bytes={MiB}-{2 * MiB - 1}"]
