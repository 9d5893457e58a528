"""A copy stored only whole (no validator) is on the shared disk from its head on, while its body is still being
written: another worker's request for it then found a slice missing and fetched the whole object from the origin
again (fwd=partial, two origin requests, each worker with a copy of its own). The fill holds the entry's lease until
its body is stored (revalidating.holds_to_the_end): the other worker now waits for that lease and reads the slices
on the disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.e2e.test_operations import metric
from tests.e2e.test_worker_cold import WARM
from tests.e2e.test_worker_revalidation import Conn, collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

BODY = DATA[: 4 * MiB]


async def memory_slices(s: aiohttp.ClientSession, admin: int) -> float:
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        return metric(await r.text(), "edgecache_memory_tier_objects")


async def disk_bytes(s: aiohttp.ClientSession, admin: int) -> float:
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        return metric(await r.text(), "edgecache_disk_tier_bytes")


async def b_waits_for_a(
    origin: Origin, s: aiohttp.ClientSession, admin: int, a: Conn, b: Conn
) -> tuple[asyncio.Future[tuple[int, dict[str, str], bytes]], asyncio.Future[tuple[int, dict[str, str], bytes]]]:
    """A asks for /p.bin; once its first slice is on the disk (its copy's metadata is there before it), B asks too;
    until B waits for A's body (a collapsed wait), or asks the origin itself (before the fix). Both answers, to come.

    On the disk, not in A's memory (A writes it there after): a B that found slice 0 missing sent its head and slice
    0 as soon as slice 0 landed, so a killed A's copy, fetched again as another copy (it has no validator), could
    only cut B's answer. With slice 0 on the disk, B's head waits for slice 1's first bytes, as meant. The disk's
    gauge grows by a slice then (the /warm object, its 1,000 bytes perhaps sampled late, never by as much)."""
    waits, on_disk = await collapsed(s, admin), await disk_bytes(s, admin)
    first = asyncio.ensure_future(a.get("/p.bin"))
    async with asyncio.timeout(20):
        while await disk_bytes(s, admin) < on_disk + MiB:  # noqa: ASYNC110 (another process: polled)
            await asyncio.sleep(0.02)
        second = asyncio.ensure_future(b.get("/p.bin"))
        while await collapsed(s, admin) == waits and origin.hits["/p.bin"] == 1:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return first, second


def held_after(origin: Origin, path: str, sent: int, finish: asyncio.Event) -> None:
    """The origin's first answer for `path` sends `sent` bytes of its body, then waits for `finish`."""

    async def hold(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        await resp.write(BODY[:sent])
        await finish.wait()
        await resp.write(BODY[sent:])
        await resp.write_eof()
        return resp

    origin.on_request = hold


async def test_a_whole_copy_being_written_is_read_by_another_worker_not_fetched_again(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker A's miss of a copy stored only whole has stored its head and first slice; the rest of its body is
    held at the origin. Worker B's request, made once the copy is on the disk, waits for A's body (a collapsed
    wait) instead of asking the origin (before: fwd=partial, a second origin request for the whole object). Both
    answers exact, one origin request."""
    origin.put("/warm", WARM)
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    finish = asyncio.Event()
    held_after(origin, "/p.bin", MiB + MiB // 2, finish)  # its first slice, and half the next
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        waits = await collapsed(s, admin)
        try:
            first, second = await b_waits_for_a(origin, s, admin, a, b)
        finally:
            finish.set()
        async with asyncio.timeout(30):
            answers = await asyncio.gather(first, second)
        assert [(status, data == BODY) for status, _, data in answers] == [(200, True), (200, True)]
        assert origin.hits["/p.bin"] == 1
        # B waited: once for each slice it reached before A had stored it (slice 1, and 2 when A is slow to write)
        assert await collapsed(s, admin) > waits


async def test_a_whole_copy_whose_writer_was_killed_is_fetched_by_the_waiting_worker_at_once(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker A is killed mid-body while B waits for its lease: the lease names A's process, so B fetches the
    object itself at once (the lease never lapses here: NEVER_LAPSES), and its answer, begun from A's first slice
    on the disk, is whole and exact: the same bytes, asked of the origin a second time."""
    origin.put("/warm", WARM)
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    finish = asyncio.Event()
    held_after(origin, "/p.bin", MiB + MiB // 2, finish)
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        waits = await collapsed(s, admin)
        try:
            doomed, second = await b_waits_for_a(origin, s, admin, a, b)
            assert (await collapsed(s, admin), origin.hits["/p.bin"]) == (waits + 1, 1)
            os.kill(a.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await doomed
            async with asyncio.timeout(30):  # a hang's bound only: a lease not let go would hold for an hour
                status, _, data = await second
        finally:
            finish.set()
        assert (status, data == BODY, len(data)) == (200, True, len(BODY))
        assert origin.hits["/p.bin"] == 2  # the killed worker's, then the waiter's own
