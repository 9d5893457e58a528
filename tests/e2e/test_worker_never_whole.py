"""A whole copy's holder that will never store it complete lets go of the entry's lease at once.

A copy stored only whole keeps the entry's lease until its body is stored (proxy.revalidating.holds_to_the_end),
and another worker missing it meanwhile waits. A body of unknown length past the node's bound for one
(Engine.max_unknown: disk // 8) is still streamed to its reader but no longer stored: the waiter,
woken only at the body's end (or by the lease's 10 s), would find a copy it may not take and ask the origin anyway.
Now the holder lets go once it knows, and the waiter asks the origin while the first body is still being sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from tests.e2e.test_worker_cold import WARM
from tests.e2e.test_worker_revalidation import Conn, collapsed, each_worker
from tests.e2e.test_workers import DATA, NEVER_LAPSES, MiB
from tests.origin import Origin

BIG = DATA * 3  # past max_unknown: the test config's disk (256 MiB) // 8
HOLD_AT = 33 * MiB  # past the bound, where the first body stops until the second request reaches the origin
# A hang's bound: no lease lapses here (NEVER_LAPSES), so a second origin request can only follow the let-go, and one
# that waited for the first body's end comes after HOLD, however slow the machine.
HOLD = 30.0


async def chunked(request: web.BaseRequest, second: asyncio.Event | None, timed_out: list[bool]) -> web.StreamResponse:
    """BIG without a length or a validator; with `second`, held at HOLD_AT until it is set (or HOLD passed: told
    in `timed_out`)."""
    resp = web.StreamResponse(headers={"Cache-Control": "public, max-age=3600"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for at in range(0, len(BIG), MiB):
        if second is not None and at == HOLD_AT:
            try:
                await asyncio.wait_for(second.wait(), HOLD)
            except TimeoutError:
                timed_out.append(True)
        await resp.write(BIG[at : at + MiB])
    await resp.write_eof()
    return resp


async def get_chunked(conn: Conn, path: str) -> tuple[int, bytes]:
    """`path` asked on `conn`, closed after: the status and the decoded chunked body."""
    conn.writer.write(f"GET {path} HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n".encode())
    head = await conn.reader.readuntil(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head, head
    body = bytearray()
    while size := int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await conn.reader.readexactly(size)
        await conn.reader.readexactly(2)
    return int(head.split()[1]), bytes(body)


async def test_a_body_of_unknown_length_past_the_bound_lets_the_waiting_worker_ask(
    origin: Origin, tmp_path: Path
) -> None:
    """Worker A's miss holds the lease; worker B's waits (a collapsed wait). A's body passes the bound and is no
    longer stored: B asks the origin while A's body is held at HOLD_AT, not after it. Both answers exact."""
    origin.put("/warm", WARM)
    second, held, timed_out = asyncio.Event(), asyncio.Event(), list[bool]()

    async def big(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        if request.path != "/big.bin":
            return None
        if origin.hits["/big.bin"] > 1:
            second.set()
            return await chunked(request, None, timed_out)
        await held.wait()  # until worker B waits for A's lease
        return await chunked(request, second, timed_out)

    origin.on_request = big
    async with each_worker(tmp_path, origin, "/warm", WARM, pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        seen, waits = len(origin.seen), await collapsed(s, admin)
        first = asyncio.ensure_future(get_chunked(a, "/big.bin"))
        try:
            async with asyncio.timeout(20):
                await origin.wait_for_requests(seen + 1)
                later = asyncio.ensure_future(get_chunked(b, "/big.bin"))
                while await collapsed(s, admin) == waits:  # noqa: ASYNC110 (another process: polled)
                    await asyncio.sleep(0.02)
        finally:
            held.set()
        async with asyncio.timeout(60):
            answers = await asyncio.gather(first, later)
        assert answers == [(200, BIG), (200, BIG)]
        assert origin.hits["/big.bin"] == 2
        assert timed_out == []  # B asked while A's body was held past the bound, not once it ended
