"""A purge while a copy stored only whole is being fetched lets the waiting worker ask at once, not at its end.

The fill of a copy stored only whole keeps the entry's lease until its body is stored (revalidating.holds_to_the_end),
and a miss in another worker waits for it, to answer from the complete copy. A purge of the object meanwhile makes
that copy useless to the waiter (it asks the origin itself once the lease goes): it waited out the whole body for
nothing. Now the holder lets go once it sees the purge (at its next slice), and the waiter asks the origin while the
first body is still on its way.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_cold import WARM
from tests.e2e.test_worker_revalidation import collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, OPERATOR, MiB
from tests.origin import Origin

# Four slices: within a run of fill_slices (4) of its end from the start, the fill is never stopped as unread
# (Engine.unread), which its reader's stream, idle while the body is held, sometimes was at its first slice.
BODY = DATA[: 4 * MiB]


async def test_a_purge_during_a_whole_fill_lets_the_waiting_worker_ask(origin: Origin, tmp_path: Path) -> None:
    """Worker A's miss holds the lease; B's waits (a collapsed wait). A's body stops past its first slice; the
    object is purged; A's body goes on past its second slice and stops again: B asks the origin then (before, only
    once A's body had ended). Both answers exact, two origin requests. The lease never lapses here (NEVER_LAPSES)
    and A's body is held to the end: B's origin request can only follow the let-go, however slow the machine."""
    origin.put("/warm", WARM)
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go, purged, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def in_steps(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != "/p.bin" or origin.hits["/p.bin"] > 1:
            return None
        await go.wait()  # B's miss comes before A's head (after it, B reads the copy A is writing)
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        await resp.write(BODY[: MiB + MiB // 2])
        await purged.wait()
        await resp.write(BODY[MiB + MiB // 2 : 2 * MiB + MiB // 2])  # past the second slice: the holder looks
        await finish.wait()
        await resp.write(BODY[2 * MiB + MiB // 2 :])
        await resp.write_eof()
        return resp

    origin.on_request = in_steps
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        seen, waits, begun = len(origin.seen), await collapsed(s, admin), asyncio.Event()
        try:
            first = asyncio.ensure_future(a.get("/p.bin", begun=begun))
            async with asyncio.timeout(20):
                await origin.wait_for_requests(seen + 1)
                second = asyncio.ensure_future(b.get("/p.bin"))
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110 (another process: polled)
                    await asyncio.sleep(0.02)
                go.set()
                # Until A's client has its first slice, not until the origin sent it: purged before A's worker read
                # its head, A's copy was judged purged there (not stored: let go of at its head), and B asked at
                # once whatever the holder does at a slice (3 of 5 runs under load passed with let_go_if_purged
                # made to do nothing). A's head is stored before a byte of its body is sent (Conn.get's `begun`).
                await begun.wait()
            auth = {"Authorization": f"Bearer {OPERATOR}"}
            body = {"url": "http://video.test/p.bin"}
            async with s.post(f"http://127.0.0.1:{admin}/purge", json=body, headers=auth) as r:
                assert r.status == 200, await r.text()
            purged.set()
            async with asyncio.timeout(30):  # a hang's bound only: A's body is held until the end of the test
                await origin.wait_for_requests(seen + 2)
        finally:
            go.set()
            purged.set()
            finish.set()
        async with asyncio.timeout(30):
            answers = await asyncio.gather(first, second)
        assert [(status, data) for status, _, data in answers] == [(200, BODY), (200, BODY)]
        assert origin.hits["/p.bin"] == 2
