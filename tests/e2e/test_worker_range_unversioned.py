"""Two workers miss the same range of an object with no validator at once, its origin honouring Range: the copy
stored only whole holds the first worker's slice alone, and the second worker reads its range from it instead of
asking the origin for the same slice again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.test_worker_revalidation import b_waits_on_a, each_worker
from tests.e2e.test_worker_whole_copy import BODY
from tests.e2e.test_workers import NEVER_LAPSES
from tests.origin import Origin


def head_held(origin: Origin, path: str, go: asyncio.Event) -> None:
    """The origin's answers for `path` wait for `go` before their head (then answer as the origin does)."""

    async def held(request: web.BaseRequest, _obj: object) -> None:
        if request.path == path:
            await go.wait()

    origin.on_request = held


@pytest.mark.parametrize("extra", ["", "Connection: X-Player\r\nX-Player: 1\r\n"], ids=["fast", "full"])
async def test_the_same_range_of_an_unversioned_object_missed_by_two_workers_is_fetched_once(
    origin: Origin, tmp_path: Path, extra: str
) -> None:
    """A asks for bytes 0-999 and the origin holds its answer; B asks for them too and waits for A's (a collapsed
    wait). Both 206 with the exact bytes, one origin request. Before, B took only a complete copy from the disk
    (revalidating._complete) and A's holds slice 0 alone: B asked the origin for slice 0 again (2 origin requests,
    the same bytes), though a later request for that range is answered from the copy. `extra`: B's request on the
    fast path, or as it leaves it to aiohttp. The origin holds A's head while the test polls (up to 20 s): no lease
    lapses here (NEVER_LAPSES), or B asks the origin too once A's lapsed, as promised."""
    origin.put("/warm", BODY[:1000])
    origin.put("/u.bin", BODY, etag=None, last_modified=None)
    go = asyncio.Event()
    head_held(origin, "/u.bin", go)
    rng = "Range: bytes=0-999\r\n"
    async with each_worker(tmp_path, origin, "/warm", BODY[:1000], pairs=1, lease=NEVER_LAPSES) as (admin, s, [(a, b)]):
        asks = (lambda: a.get("/u.bin", rng), lambda: b.get("/u.bin", rng + extra))
        answers = await b_waits_on_a(s, admin, origin, "/u.bin", asks, go)
        assert [x if isinstance(x, BaseException) else (x[0], x[2] == BODY[:1000]) for x in answers] == [
            (206, True),
            (206, True),
        ]
        assert origin.hits["/u.bin"] == 1
