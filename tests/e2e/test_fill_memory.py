"""What a worker's fills hold all together is bounded (cache.fill_memory): many cold misses at once take their turns
instead of each holding its run of slices, a fill that cannot have its turn in time is a clean 503, clients that
read private answers slowly hold back no fill of a cacheable object, and a finished fill holds nothing for a
client that reads slowly."""

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
BUDGET = 4 * RUN  # cache.fill_memory: a quarter of it for private answers, the rest for fills that may be shared
SHARED = 3 * RUN
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
        self.fills: list[Fill] = []  # in the order they took their first piece of body
        self.changed = asyncio.Event()

    def fed(self, fill: Fill) -> None:
        if fill not in self.live:
            self.fills.append(fill)
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
    feed, take, give = Fill.feed, FillMemory.take, FillMemory.give

    def fed(self: Fill, chunk: bytes | memoryview, on_complete: object) -> None:
        feed(self, chunk, on_complete)  # type: ignore[arg-type]
        seen.fed(self)

    async def taking(self: FillMemory, n: int) -> int:
        seen.changed.set()  # the test looks once this has queued (or taken) it
        return await take(self, n)

    def giving(self: FillMemory, n: int) -> None:
        give(self, n)
        seen.changed.set()

    monkeypatch.setattr(Fill, "feed", fed)
    monkeypatch.setattr(FillMemory, "take", taking)
    monkeypatch.setattr(FillMemory, "give", giving)
    return seen


async def test_cold_misses_take_turns_within_the_fill_memory(edge: Edge, origin: Origin, witness: Witness) -> None:
    hook = HeldBodies()
    origin.on_request = hook
    waits = {"pool": "shared", "outcome": "granted"}
    granted = sample_value("edgecache_fill_memory_waits_total", waits) or 0.0
    answers = [asyncio.ensure_future(edge.get(path)) for path in OBJECTS]
    memory = edge.node.engine.budget.shared
    assert memory.limit == SHARED
    fed = witness.held
    # Every fill asked for its turn, and the three that had it hold their first half.
    await witness.until(lambda: memory.waiting == 9 and bool(fed) and fed[-1] == 3 * RUN // 2)
    assert len(origin.seen) == len(OBJECTS)
    assert memory.held == SHARED
    hook.go.set()
    for path, (status, _, body) in zip(OBJECTS, await asyncio.gather(*answers), strict=True):
        assert (status, body) == (200, OBJECTS[path])
        assert origin.hits[path] == 1
    assert max(fed) <= SHARED < len(OBJECTS) * RUN // 2
    assert memory.peak == SHARED
    await settled(edge)
    assert memory.held == 0
    assert sample_value("edgecache_fill_memory_waits_total", waits) == granted + 9
    for path, data in OBJECTS.items():  # stored whole: hits
        assert (await edge.get(path))[::2] == (200, data)
        assert origin.hits[path] == 1


async def test_a_fill_that_waits_too_long_for_its_turn_is_a_503(edge: Edge, origin: Origin, witness: Witness) -> None:
    hook = HeldBodies()
    origin.on_request = hook
    memory = edge.node.engine.budget.shared
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


async def test_slow_clients_of_private_answers_hold_back_no_cacheable_fill(
    edge: Edge, origin: Origin, witness: Witness
) -> None:
    """A fill of a private answer waits for its one client, who may read as slowly as it likes: it takes from the
    pool kept for such fills, never from the one cacheable objects are filled from."""
    # far more than the sockets between the node and its client hold; made off the loop, whose stall guard watches
    private = await asyncio.to_thread(os.urandom, 32 * 2**20)
    origin.put("/p", private, headers={"Cache-Control": "private, max-age=60"})
    origin.put("/p2", private[:RUN], headers={"Cache-Control": "private, max-age=60"})
    origin.put("/c", OBJECTS["/o0"])
    paced = edge.node.engine.budget.paced
    paced.limit, paced.wait = 2 * SLICE, 0.2  # one private fill's read-ahead: two slices
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /p HTTP/1.1\r\nHost: video.test\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await witness.until(lambda: paced.held == paced.limit)  # and then the client reads nothing more
    assert (await edge.get("/c"))[::2] == (200, OBJECTS["/o0"])
    status, _, body = await edge.get("/p2")
    assert (status, body) == (503, f"the worker's fills held their memory ({2 * SLICE} bytes) for 0.2 s\n".encode())
    writer.transport.abort()  # the slow client goes: its fill ends, and gives its share back
    await witness.until(lambda: paced.held == 0)
    assert (await edge.get("/p2"))[::2] == (200, private[:RUN])
    assert (origin.hits["/p"], origin.hits["/p2"], origin.hits["/c"]) == (1, 2, 1)


async def test_a_finished_fill_holds_nothing_for_a_client_that_reads_slowly(
    edge: Edge, origin: Origin, witness: Witness
) -> None:
    """Once its slices are stored, a fill lets go of them: a client still reading them reads them from the store,
    and memory does not grow with the clients that read slowly."""
    data = await asyncio.to_thread(os.urandom, 32 * 2**20)  # off the loop: its stall guard watches
    origin.put("/big", data)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: video.test\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    await witness.until(lambda: bool(witness.fills) and witness.fills[0].done)
    first = witness.fills[0]
    await settled(edge)  # its writes landed, its share given back
    assert (first._bufs, first._held, edge.node.engine.budget.shared.held) == ({}, 0, 0)
    got = await reader.readexactly(len(data))
    assert got == data
    writer.close()
    assert origin.hits["/big"] == 1  # one fill of the whole object, which ran on without waiting for its client


async def test_cold_fills_of_one_object_that_waited_for_their_turn_store_one_copy(
    edge: Edge, origin: Origin, witness: Witness
) -> None:
    """Two cold misses of one object, for slices of different runs, each have their head judged (nothing stored
    yet: each names a new copy) and then wait for their turn. The first to take its head in names the copy; the
    other's body is more of that copy, not another one whose slices no stored copy names and that are fetched again
    (with a shared pool smaller than a run, the loadtest's everything-fits replay fetched slices twice)."""
    hook = HeldBodies()
    origin.on_request = lambda request, obj: hook(request, obj) if request.path == "/o0" else None
    data = os.urandom(8 * SLICE)
    origin.put("/v", data)
    memory = edge.node.engine.budget.shared
    memory.limit = RUN  # the fill of /o0 holds all of it until its body comes
    held = asyncio.ensure_future(edge.get("/o0"))
    await witness.until(lambda: memory.held == RUN)
    spans = [(0, SLICE - 1), (4 * SLICE, 5 * SLICE - 1)]  # two runs: two fills
    answers = [asyncio.ensure_future(edge.get("/v", Range=f"bytes={a}-{b}")) for a, b in spans]
    await witness.until(lambda: memory.waiting == 2)  # both heads judged, both waiting for their turn
    hook.go.set()
    assert (await held)[::2] == (200, OBJECTS["/o0"])
    for (a, b), answer in zip(spans, await asyncio.gather(*answers), strict=True):
        assert answer[::2] == (206, data[a : b + 1])
    assert sorted(origin.range_hits("/v")) == sorted(f"bytes={a}-{b}" for a, b in spans)  # in either order
    await settled(edge)
    for a, b in spans:  # both runs stored as one copy: hits
        status, headers, body = await edge.get("/v", Range=f"bytes={a}-{b}")
        assert (status, headers["Content-Range"], body) == (206, f"bytes {a}-{b}/{len(data)}", data[a : b + 1])
    assert origin.hits["/v"] == 2


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_the_first_miss_of_a_private_varied_answer_waits_for_no_share_its_other_variant_holds(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A first miss knows no Vary: its fill sends no Accept-Language, the private answer Varies on it, and the
    request is fetched again with it. The first fill, which nobody reads, held its share of the private pool until
    the request ended, and the second waited for that share: with a pool of one private fill, every such request
    was a 503 after read_timeout (fuzzed: a Vary'd no-store object was 503 for good)."""
    body = os.urandom(3 * SLICE + 17)
    varied = {"Cache-Control": "private", "Vary": "Accept-Language"}
    origin.put("/v.bin", body, etag=None, last_modified=None, headers=varied)
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE, fill_slices=2, fill_memory=8 * SLICE)
    async with start_edge(replace(config, fast_path=fast)) as edge:
        for n in (1, 2):
            status, headers, got = await edge.get("/v.bin", **{"Accept-Language": "en"})
            assert (status, headers["Cache-Status"]) == (200, 'edgecache; fwd=uri-miss; detail="private"')
            assert got == body
            assert origin.hits["/v.bin"] == 2 * n  # the answer without the field, then with it
