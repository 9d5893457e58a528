"""Several workers miss at once an object stored only whole: the origin is asked once between them.

A copy with no validator (or an answer other than a 200: a cached 404, a 301) is fetched whole and stored whole;
nothing proves two fetches of it the same version, so a worker never reads such a copy by slice while another is
still writing it. The holder of the entry's lease (proxy.revalidating) let go of it at its head, so the waiting
worker found a copy it could not take yet and asked the origin too: two fetches, and twice the origin's first-byte
time for the waiter. Now the holder keeps the lease until the whole body is stored, as nginx's proxy_cache_lock
does, and the waiter answers from the complete copy, told as a request that joined that miss in its own worker is
(fwd=uri-miss: core.status.of_304).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.test_faults import cut_after
from tests.e2e.test_worker_cold import WARM, cold_at_once
from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

NOT_FOUND = b"no such video here\n" * 1000
CASES = [
    pytest.param("/gone.bin", NOT_FOUND, 404, id="cached-404"),
    pytest.param("/plain.bin", DATA, 200, id="no-validators"),
]


@pytest.mark.parametrize(("path", "body", "status"), CASES)
async def test_an_object_stored_whole_every_worker_misses_at_once_is_fetched_once(
    origin: Origin, tmp_path: Path, path: str, body: bytes, status: int
) -> None:
    """Each worker asks at once while the origin holds its answer; one worker's request reaches the origin, the
    other waits for it (or, before, asked too once the holder's head was in). One origin hit, exact bytes, and the
    waiter's answer is made from the copy the holder stored (fwd=uri-miss, without `stored`: it stored nothing).
    The origin is held while the test polls (up to 20 s): no lease lapses here (NEVER_LAPSES), or the waiter would
    ask too, as promised after a lease's time."""
    origin.put("/warm", WARM)
    fields = {"Cache-Control": "public, max-age=3600"}
    origin.put(path, body, status=status, etag=None, last_modified=None, headers=fields)
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        answers = await cold_at_once(origin, s, admin, [(a, ""), (b, "")], path)
        assert [(got, data) for got, _, data in answers] == [(status, body), (status, body)]
        assert origin.hits[path] == 1
        statuses = sorted(fields["cache-status"] for _, fields, _ in answers)
        assert statuses == ["edgecache; fwd=uri-miss", "edgecache; fwd=uri-miss; stored"], statuses


async def test_a_whole_copy_cut_lets_the_waiting_worker_ask_at_once(origin: Origin, tmp_path: Path) -> None:
    """The holder keeps the lease past its head; its body is cut (past its first slice): it lets go at once, and
    the waiter asks the origin itself at once, answered whole. The lease never lapses here (NEVER_LAPSES): a
    waiter's origin request can only follow the let-go, however slow the machine."""
    origin.put("/warm", WARM)
    origin.put("/plain.bin", DATA, etag=None, last_modified=None)
    held, first = asyncio.Event(), cut_after(2 * MiB + 1000, etag=False)

    async def cut_the_first(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.path != "/plain.bin" or origin.hits["/plain.bin"] > 1:
            return None
        await held.wait()
        return await first(request, obj)  # type: ignore[no-any-return]

    origin.on_request = cut_the_first
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        seen, waits = len(origin.seen), await collapsed(s, admin)
        tasks = [asyncio.ensure_future(conn.get("/plain.bin")) for conn in (a, b)]
        try:
            async with asyncio.timeout(20):
                await origin.wait_for_requests(seen + 1)
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110 (another process: polled)
                    await asyncio.sleep(0.02)
        finally:
            held.set()
        async with asyncio.timeout(30):  # a hang's bound only: a lease not let go would hold for an hour
            await origin.wait_for_requests(seen + 2)
        async with asyncio.timeout(30):
            answers = await asyncio.gather(*tasks, return_exceptions=True)
        cut = [x for x in answers if isinstance(x, asyncio.IncompleteReadError)]
        whole = [
            (status, fields["cache-status"], body)
            for status, fields, body in (x for x in answers if not isinstance(x, BaseException))
        ]
        assert (len(cut), whole) == (1, [(200, "edgecache; fwd=uri-miss; stored", DATA)])
        assert origin.hits["/plain.bin"] == 2
