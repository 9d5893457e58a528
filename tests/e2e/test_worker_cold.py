"""Several workers on one disk miss a cold object at once: the origin is asked once between them.

Each worker missed the object on its own and asked the origin, within one first-byte time of the other: a viral
video's first seconds cost the origin's link once per worker. A miss takes the entry's lease on the shared disk
before it asks (proxy.revalidating), as nginx's proxy_cache_lock does; a worker that finds it held waits for the
holder's head, then reads the copy the holder stores, slice by slice as it lands (the holder leases the slices it
brings: proxy.leasing).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.e2e.test_worker_revalidation import Conn, collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

WARM = b"w" * 1000  # what the connections ask first, to learn which worker has each


def slices_fetched(origin: Origin, path: str) -> list[int]:
    """The slice indices each origin request for `path` brought, one entry per fetch of a slice (no Range: all)."""
    out: list[int] = []
    for r in origin.range_hits(path):
        if r is None:
            out += range(len(DATA) // MiB + 1)
            continue
        first, _, last = r.removeprefix("bytes=").partition("-")
        out += range(int(first) // MiB, min(int(last or len(DATA) - 1), len(DATA) - 1) // MiB + 1)
    return out


async def cold_at_once(
    origin: Origin, s: aiohttp.ClientSession, admin: int, asks: list[tuple[Conn, str]], path: str = "/v.bin"
) -> list[tuple[int, dict[str, str], bytes]]:
    """Each conn asks for `path` (with its extra header lines) while the origin holds every answer, until one
    worker waits on the other's origin request (or, without that, both asked the origin); then the answers. The
    origin is held for as long as that takes (up to 20 s): the node's cache.lease must outlast it (NEVER_LAPSES), or
    the waiter asks the origin too once the lease lapses, as promised."""
    seen, waits = len(origin.seen), await collapsed(s, admin)
    origin.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(conn.get(path, extra)) for conn, extra in asks]
    try:
        async with asyncio.timeout(20):
            await origin.wait_for_requests(seen + 1)
            # (another process: polled) until a worker waits, or a second origin request came
            while await collapsed(s, admin) == waits and len(origin.seen) < seen + 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        origin.gate.set()
    async with asyncio.timeout(30):
        return await asyncio.gather(*tasks)


async def test_a_cold_object_every_worker_misses_at_once_is_fetched_once(origin: Origin, tmp_path: Path) -> None:
    """Whole GETs and a range of the first slice in each worker: every slice comes from the origin once."""
    origin.put("/warm", WARM)
    origin.put("/v.bin", DATA)
    async with each_worker(tmp_path, origin, "/warm", WARM, lease=NEVER_LAPSES) as (admin, s, [(a, b), (c, d)]):
        ranged = "Range: bytes=0-99\r\n"
        answers = await cold_at_once(origin, s, admin, [(a, ""), (b, ""), (c, ranged), (d, ranged)])
        want = [(200, DATA), (200, DATA), (206, DATA[:100]), (206, DATA[:100])]
        assert [(status, body) for status, _, body in answers] == want
        assert sorted(slices_fetched(origin, "/v.bin")) == list(range(len(DATA) // MiB + 1))
        # The worker that waited answers from the copy the other stores, told as a request that joined that miss in
        # its own worker is (fwd=uri-miss: never `hit`, no cache held it when it was asked), or as a stored entry
        # completed meanwhile (fwd=partial). Never a miss of its own (slices_fetched above).
        by_worker = [{answers[0][1]["cache-status"], answers[2][1]["cache-status"]}]  # a and c: one worker
        by_worker.append({answers[1][1]["cache-status"], answers[3][1]["cache-status"]})  # b and d: the other
        missed = {"edgecache; fwd=uri-miss; stored"}
        holder, waiter = sorted(by_worker, key=lambda statuses: statuses != missed)
        assert holder == missed, by_worker
        assert waiter <= {"edgecache; fwd=uri-miss", "edgecache; fwd=partial"}, by_worker


async def test_a_cold_slice_every_worker_misses_at_once_is_fetched_once(origin: Origin, tmp_path: Path) -> None:
    """Ranges within the first slice, two in each worker: the slice is fetched once, by one worker's ranged fill,
    which leases it once its head named the copy (before, the other worker, finding the copy, fetched it too)."""
    origin.put("/warm", WARM)
    origin.put("/v.bin", DATA)
    async with each_worker(tmp_path, origin, "/warm", WARM, lease=NEVER_LAPSES) as (admin, s, [(a, b), (c, d)]):
        spans = [(0, 99), (500, 599), (900_000, 900_099), (MiB - 100, MiB - 1)]
        asks = [(conn, f"Range: bytes={lo}-{hi}\r\n") for conn, (lo, hi) in zip((a, b, c, d), spans, strict=True)]
        answers = await cold_at_once(origin, s, admin, asks)
        assert [(status, body) for status, _, body in answers] == [(206, DATA[lo : hi + 1]) for lo, hi in spans]
        assert slices_fetched(origin, "/v.bin") == [0]
