"""What a worker's fills hold all together is bounded (cache.fill_memory): many cold misses at once take their turns
instead of each holding its run of slices, and a fill that cannot have its turn in time is a clean 503."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.proxy.fill import Fill
from edgecache.proxy.fillmemory import FillMemory
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Obj, Origin
from tests.samples import sample_value

SLICE = 64 * 1024
RUN = 4 * SLICE  # fill_slices x slice: what one cold miss of a whole object fills
BUDGET = 4 * RUN
OBJECTS = {f"/o{i}": os.urandom(RUN) for i in range(12)}


class HeldBodies:
    """Origin hook: each object's head and its first half at once, the second half once `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def __call__(self, request: web.BaseRequest, obj: Obj | None) -> web.StreamResponse:
        data = OBJECTS[request.path]
        resp = web.StreamResponse(status=200, headers={"Cache-Control": "max-age=3600", "ETag": f'"{request.path}"'})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: RUN // 2])
        await self.go.wait()
        try:
            await resp.write(data[RUN // 2 :])
            await resp.write_eof()
        except ConnectionResetError:  # the edge let go of an answer it had no turn for
            pass
        return resp


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE, fill_memory=BUDGET)
    async with start_edge(replace(config, fast_path=request.param == "fast")) as e:
        yield e


def origin_failures() -> float | None:
    return sample_value("edgecache_origin_errors_total", {"site": "videos", "kind": "failed"})


async def settled(edge: Edge) -> None:
    """Until every fill has ended and its disk writes have landed: its share of fill memory is given back then."""
    await asyncio.gather(*edge.node.engine._tasks, return_exceptions=True)
    await edge.node.engine.flush()


class Witness:
    """After every piece of body a fill takes in: the bytes held by every fill still taking its body in (`held`);
    and a wake-up for the test at each of those and at each fill asking for its share of fill memory."""

    def __init__(self) -> None:
        self.held: list[int] = []
        self.live: set[Fill] = set()
        self.changed = asyncio.Event()

    def fed(self, fill: Fill) -> None:
        self.live.add(fill)
        self.held.append(sum(f._held for f in self.live if not f.done))
        self.changed.set()

    async def until(self, ready: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not ready():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def witness(monkeypatch: pytest.MonkeyPatch) -> Witness:
    seen = Witness()
    feed, take = Fill.feed, FillMemory.take

    def fed(self: Fill, chunk: bytes | memoryview, on_complete: object) -> None:
        feed(self, chunk, on_complete)  # type: ignore[arg-type]
        seen.fed(self)

    async def taking(self: FillMemory, n: int) -> int:
        seen.changed.set()  # the test looks once this has queued (or taken) it
        return await take(self, n)

    monkeypatch.setattr(Fill, "feed", fed)
    monkeypatch.setattr(FillMemory, "take", taking)
    return seen


async def test_cold_misses_take_turns_within_the_fill_memory(edge: Edge, origin: Origin, witness: Witness) -> None:
    hook = HeldBodies()
    origin.on_request = hook
    granted = sample_value("edgecache_fill_memory_waits_total", {"outcome": "granted"}) or 0.0
    answers = [asyncio.ensure_future(edge.get(path)) for path in OBJECTS]
    memory = edge.node.engine.memory
    fed = witness.held
    # Every fill asked for its turn, and the four that had it hold their first half.
    await witness.until(lambda: memory.waiting == 8 and bool(fed) and fed[-1] == 2 * RUN)
    assert len(origin.seen) == len(OBJECTS)
    assert memory.held == BUDGET
    hook.go.set()
    for path, (status, _, body) in zip(OBJECTS, await asyncio.gather(*answers), strict=True):
        assert (status, body) == (200, OBJECTS[path])
        assert origin.hits[path] == 1
    assert max(fed) <= BUDGET < len(OBJECTS) * RUN // 2
    assert memory.peak == BUDGET
    await settled(edge)
    assert memory.held == 0
    assert sample_value("edgecache_fill_memory_waits_total", {"outcome": "granted"}) == granted + 8
    for path, data in OBJECTS.items():  # stored whole: hits
        assert (await edge.get(path))[::2] == (200, data)
        assert origin.hits[path] == 1


async def test_a_fill_that_waits_too_long_for_its_turn_is_a_503(edge: Edge, origin: Origin, witness: Witness) -> None:
    hook = HeldBodies()
    origin.on_request = hook
    memory = edge.node.engine.memory
    memory.limit, memory.wait = RUN, 0.2  # one fill at a time, a short wait
    first = asyncio.ensure_future(edge.get("/o0"))
    await witness.until(lambda: memory.held == RUN)
    failed = origin_failures()
    reason = f"the worker's fills held their memory ({RUN} bytes) for 0.2 s"
    for _ in range(2):
        status, headers, body = await edge.get("/o1")
        assert (status, body) == (503, reason.encode() + b"\n")
        assert headers["Retry-After"] == "1"
        assert headers["Cache-Status"] == f'edgecache; detail="{reason}"'
    assert origin.hits["/o1"] == 2
    assert origin_failures() == failed  # the node's doing, not the origin's
    hook.go.set()
    assert (await first)[::2] == (200, OBJECTS["/o0"])
    await settled(edge)
    assert (await edge.get("/o1"))[::2] == (200, OBJECTS["/o1"])
    assert origin.hits["/o1"] == 3
    await settled(edge)
    assert memory.held == 0
