"""A copy stored only whole (no validator) whose body takes longer than a lease (cache.lease) to come: another
worker reading it from the shared disk while it is written (revalidating.whole_by_another_worker) must not take
the lease's expiry for its writer's end, and fetch a copy of its own halfway through its answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.test_worker_revalidation import b_waits_on_a, collapsed, each_worker
from tests.e2e.test_worker_whole_copy import BODY, b_waits_for_a
from tests.e2e.test_workers import NEVER_LAPSES, MiB
from tests.origin import Origin

PIECE = 128 * 1024
FIRST = MiB + MiB // 2  # the first slice, and half the next, before the origin slows down
PIECES = (len(BODY) - FIRST) // PIECE
# The node's cache.lease in the tests whose origin is paced in leases: what they assert holds for any lease well
# over KEEP, the origin's pace while the test's own steps run (kept_live), and at the default's 10 s they waited
# 15 s and 13 s for the origin.
LEASE = 4.0
# Between two pieces of the slow part: it lasts longer than a lease, each pause well within the read timeout.
PAUSE = 1.5 * LEASE / PIECES
# Between two bytes while the origin holds for the test's steps (kept_live): well within a lease.
KEEP = LEASE / 8


async def kept_live(resp: web.StreamResponse, body: bytes, at: int, go: asyncio.Event) -> int:
    """Until `go` is set, a byte of `body` from `at` each KEEP (a slow origin, not a synchronisation); where it got.

    The holder's lease lasts a lease past the last bytes it received (proxy.revalidating.held_on): an origin silent
    for longer is one a lease's expiry hands to another worker, which then asks it too. Silent while the test's steps
    ran (b_waits_for_a: about a second, longer than LEASE on a loaded machine), the other worker fetched a copy of
    its own (2 origin requests; with the steps made 4.5 s longer by hand, both lease-long tests failed so)."""
    while True:
        try:
            async with asyncio.timeout(KEEP):
                await go.wait()
            return at
        except TimeoutError:
            await resp.write(body[at : at + 1])
            at += 1


async def paced(request: web.BaseRequest, kept: asyncio.Event | None = None) -> web.StreamResponse:
    """BODY as a slow origin sends it: FIRST bytes, then (kept live until `kept` is set: kept_live) the rest a PIECE
    each PAUSE."""
    resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
    resp.content_length = len(BODY)
    await resp.prepare(request)
    await resp.write(BODY[:FIRST])
    sent = FIRST if kept is None else await kept_live(resp, BODY, FIRST, kept)
    for at in range(sent, len(BODY), PIECE):
        await asyncio.sleep(PAUSE)
        await resp.write(BODY[at : at + PIECE])
    await resp.write_eof()
    return resp


def slow_after(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path`: FIRST bytes, a byte each KEEP until `go` is set (kept_live), then the
    rest a PIECE each PAUSE (a slow origin, not a synchronisation: the fill outlasts its lease however fast the node
    is)."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        return await paced(request, go)

    origin.on_request = slow


async def test_a_whole_copy_written_for_longer_than_its_lease_is_read_to_its_end(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker B reads worker A's copy while A writes it, slowly: both answers whole and exact, one origin request.
    Before, A's lease expired mid-body (it was taken for a lease's time, never renewed), B took that for A's end,
    asked the origin for a copy of its own, and cut its answer (another copy's bytes are never served for one)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    slow_after(origin, "/p.bin", go)
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=LEASE) as (admin, s, [(a, b)]):
        try:
            first, second = await b_waits_for_a(origin, s, admin, a, b)
        finally:
            go.set()
        async with asyncio.timeout(40):  # a bound, as before the lease was shortened
            answers = await asyncio.gather(first, second, return_exceptions=True)
        got = [a if isinstance(a, BaseException) else (a[0], len(a[2]), a[2] == BODY) for a in answers]
        assert got == [(200, len(BODY), True), (200, len(BODY), True)]
        assert origin.hits["/p.bin"] == 1


# An origin slower than a slice a lease: the rest of slice 1 comes a TRICKLE each TRICKLE_PAUSE, in all longer than
# LEASE (1.28 of it), each pause well within both the read timeout and a lease.
TRICKLE = 32 * 1024
TRICKLE_PAUSE = 0.08 * LEASE


def trickled(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path`: FIRST bytes, a byte each KEEP until `go` is set (kept_live), then the
    rest of slice 1 a TRICKLE each TRICKLE_PAUSE (a paced origin, not a synchronisation), then the rest at once."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        await resp.write(BODY[:FIRST])
        held = await kept_live(resp, BODY, FIRST, go)
        for at in range(held, 2 * MiB, TRICKLE):
            await asyncio.sleep(TRICKLE_PAUSE)
            await resp.write(BODY[at : min(at + TRICKLE, 2 * MiB)])
        await resp.write(BODY[2 * MiB :])
        await resp.write_eof()
        return resp

    origin.on_request = slow


async def test_a_whole_copy_whose_slice_takes_longer_than_a_lease_is_read_to_its_end(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker B reads worker A's copy while A writes it, and one slice of it takes longer than a lease to come:
    both answers whole and exact, one origin request. Before, A renewed its lease only per slice stored, so it
    lapsed under the slow slice (and B's own wait for it ended after a lease): B asked the origin for a copy
    of its own (2 origin requests, each worker writing a copy of its own over the other's)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    trickled(origin, "/p.bin", go)
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=LEASE) as (admin, s, [(a, b)]):
        try:
            first, second = await b_waits_for_a(origin, s, admin, a, b)
        finally:
            go.set()
        async with asyncio.timeout(40):  # a bound, as before the lease was shortened
            answers = await asyncio.gather(first, second, return_exceptions=True)
        got = [a if isinstance(a, BaseException) else (a[0], len(a[2]), a[2] == BODY) for a in answers]
        assert got == [(200, len(BODY), True), (200, len(BODY), True)]
        assert origin.hits["/p.bin"] == 1


def held_at(origin: Origin, path: str, stops: list[tuple[int, asyncio.Event]]) -> None:
    """The origin's first answer for `path` sends its body up to each stop's offset, then waits for its event."""

    async def held(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
        resp.content_length = len(BODY)
        await resp.prepare(request)
        at = 0
        for offset, event in stops:
            await resp.write(BODY[at:offset])
            at = offset
            await event.wait()
        await resp.write(BODY[at:])
        await resp.write_eof()
        return resp

    origin.on_request = held


async def test_a_reader_of_a_whole_copy_being_written_goes_on_as_each_slice_lands(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker B waits for slice 1 of A's copy; the origin then brings slice 1 (and half of slice 2) and holds the
    rest. B's viewer gets the head and both first slices while the origin holds: B waited for its slice, not for
    the whole body. Before, B waited for A's lease to go (the whole body stored) or LEASE_SECONDS, at its first
    missing slice and again at each slice it caught up with. The lease never lapses here (NEVER_LAPSES), and the
    rest is held to the end: a B that waited for the lease would never answer, however slow the machine."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    more, rest = asyncio.Event(), asyncio.Event()
    held_at(origin, "/p.bin", [(MiB + MiB // 2, more), (2 * MiB + MiB // 2, rest)])
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        try:
            waits, begun = await collapsed(s, admin), asyncio.Event()
            first = asyncio.ensure_future(a.get("/p.bin", begun=begun))
            async with asyncio.timeout(20):
                # A's copy is on the disk once A's client has its first slice (Conn.get's `begun`). Not once the
                # memory tier's gauge changed: that was the /warm object's too, sampled late (stats_interval), and B
                # then asked before A's head, a miss that waits for A's lease, held to the body's end.
                await begun.wait()
                b.writer.write(b"GET /p.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            more.set()
            async with asyncio.timeout(30):  # a hang's bound only: a lease waited for would hold for an hour
                head = await b.reader.readuntil(b"\r\n\r\n")
                begun = await b.reader.readexactly(2 * MiB)
            assert not rest.is_set()
        finally:
            more.set()
            rest.set()
        async with asyncio.timeout(30):
            status, _, data = await first
            tail = await b.reader.readexactly(len(BODY) - 2 * MiB)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"\r\nContent-Length: {len(BODY)}\r\n".encode() in head
        assert (status, data == BODY, begun + tail == BODY) == (200, True, True)
        assert origin.hits["/p.bin"] == 1


async def test_a_whole_copy_being_written_is_read_by_the_other_workers_full_handler_too(
    origin: Origin, tmp_path: Path
) -> None:
    """As test_worker_whole_copy, with B's request one the fast path leaves to aiohttp (a Connection field naming
    another field). The full handler took the missing slice of a copy without a version for a copy of its own to
    drop (serving._completed): it dropped A's copy from the shared disk while A wrote it, and asked the origin for
    another. It waits for A's slices now, as the fast path does: both answers exact, one origin request. The origin
    is held mid-body while the test polls (up to 20 s): no lease lapses here (NEVER_LAPSES), or B fetches a copy of
    its own once A's lapsed, as promised."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    finish = asyncio.Event()
    held_at(origin, "/p.bin", [(MiB + MiB // 2, finish)])
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        begun = asyncio.Event()

        async def started() -> bool:
            return begun.is_set()  # A's copy on the disk: B reads it (as in the test above)

        full = "Connection: X-Player\r\nX-Player: 1\r\n"  # a request the fast path leaves to aiohttp
        asks = (lambda: a.get("/p.bin", begun=begun), lambda: b.get("/p.bin", full))
        answers = await b_waits_on_a(s, admin, origin, "/p.bin", asks, finish, started)
        assert [x if isinstance(x, BaseException) else (x[0], x[2] == BODY) for x in answers] == [
            (200, True),
            (200, True),
        ]
        assert origin.hits["/p.bin"] == 1


def headed_after(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's first answer for `path` waits for `go` before its head; then FIRST bytes, and the rest a PIECE
    each PAUSE (a slow origin: its body takes longer than a lease to come)."""

    async def slow(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path != path or origin.hits[path] > 1:
            return None
        await go.wait()
        return await paced(request)

    origin.on_request = slow


@pytest.mark.parametrize("extra", ["", "Connection: X-Player\r\nX-Player: 1\r\n"], ids=["fast", "full"])
async def test_a_miss_waiting_for_another_workers_head_reads_its_whole_copy_as_it_is_written(
    origin: Origin, tmp_path: Path, extra: str
) -> None:
    """Worker B misses the object while A's origin request waits for its head (B waits for A's answer: a collapsed
    wait); the answer is a copy stored only whole whose body takes longer than a lease. Both answers whole and
    exact, one origin request. Before, B waited for A's lease at most one lease: A holds it to its body's end
    (revalidating.holds_to_the_end), and B, its wait over, asked the origin for a copy of its own (2 origin
    requests, each worker writing a copy over the other's), as a request that came after A's head never does.
    `extra`: B's request as the fast path answers it, or as it leaves it to aiohttp (a Connection field naming
    another)."""
    origin.put("/warm", BODY[:1000])
    origin.put("/p.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    headed_after(origin, "/p.bin", go)
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=LEASE) as (admin, s, [(a, b)]):
        answers = await b_waits_on_a(
            s, admin, origin, "/p.bin", (lambda: a.get("/p.bin"), lambda: b.get("/p.bin", extra)), go
        )
        got = [a if isinstance(a, BaseException) else (a[0], len(a[2]), a[2] == BODY) for a in answers]
        assert got == [(200, len(BODY), True), (200, len(BODY), True)]
        assert origin.hits["/p.bin"] == 1
