"""Cache-Status says exactly where an answer's bytes came from, and the request and miss metrics agree with it.

`hit` only when no byte came from a peer or origin; an answer made from a stored entry some of whose slices were
fetched says `fwd=partial`; each miss is counted once, by one cause (cold, expired, evicted, peer-down,
uncacheable), and only what was stored and then dropped is `evicted`. Each case runs on the fast path and on
aiohttp's handler alone.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import CacheSettings
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_ranges_e2e import parse_multipart
from tests.origin import Origin
from tests.samples import applied

SLICE = 64 * 1024
DATA = os.urandom(5 * SLICE + 123)  # six slices, the last one short

Deltas = dict[tuple[str, ...], float]


def counts() -> Counter[tuple[str, ...]]:
    """Every sample of the request and miss counters of the test site, by its labels."""
    found: Counter[tuple[str, ...]] = Counter()
    for family in applied().restricted_registry(["edgecache_requests_total", "edgecache_misses_total"]).collect():
        for s in family.samples:
            if s.labels.get("site") != "videos" or not s.name.endswith("_total"):
                continue
            if s.name == "edgecache_requests_total":
                found["requests", s.labels["method"], s.labels["status_class"], s.labels["cache_status"]] += s.value
            elif s.name == "edgecache_misses_total":
                found["misses", s.labels["cause"]] += s.value
    return found


class Meter:
    """The counters' changes since the last look."""

    def __init__(self) -> None:
        self.before = counts()

    def deltas(self) -> Deltas:
        now = counts()
        changed = {k: now[k] - self.before[k] for k in now.keys() | self.before.keys() if now[k] != self.before[k]}
        self.before = now
        return changed


async def settled(*edges: Edge) -> None:
    """Until every request answered has been counted (its handler has returned) and every fill has ended with
    its slices written."""
    async with asyncio.timeout(10):
        for edge in edges:
            await asyncio.gather(*edge.node.engine._tasks)
            await edge.node.engine.flush()
            # A plain counter, no event: the handler counts a request in the same turn as it leaves in_flight.
            while edge.node.shared.in_flight:  # noqa: ASYNC110
                await asyncio.sleep(0)


async def ask(edge: Edge, path: str, **headers: str) -> tuple[int, str, bytes]:
    status, got, body = await edge.get(path, **headers)
    await settled(edge)
    return status, got["Cache-Status"], body


def hit(status: str = "2xx") -> Deltas:
    return {("requests", "GET", status, "hit"): 1}


def miss(status: str, cause: str, cache: str = "miss") -> Deltas:
    return {("requests", "GET", status, cache): 1, ("misses", cause): 1}


@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE)
    async with start_edge(replace(config, fast_path=request.param == "fast")) as e:
        origin.put("/o", DATA)
        yield e


async def test_a_full_hit_and_a_range_whose_slices_are_all_cached(edge: Edge, origin: Origin) -> None:
    meter = Meter()
    assert await ask(edge, "/o") == (200, "edgecache; fwd=uri-miss; stored", DATA)
    assert meter.deltas() == miss("2xx", "cold")
    assert await ask(edge, "/o") == (200, "edgecache; hit", DATA)
    assert meter.deltas() == hit()
    assert await ask(edge, "/o", Range="bytes=70000-200000") == (206, "edgecache; hit", DATA[70000:200001])
    assert meter.deltas() == hit()
    assert origin.hits["/o"] == 1


async def test_a_multi_range_with_one_slice_fetched_is_partial(edge: Edge, origin: Origin) -> None:
    meter = Meter()
    assert await ask(edge, "/o", Range="bytes=0-99") == (206, "edgecache; fwd=uri-miss; stored", DATA[:100])
    assert meter.deltas() == miss("2xx", "cold")
    # Slice 0 is stored, slice 3 never was: fetched for this answer, so no hit, and cold (never stored), not
    # evicted.
    header = "bytes=0-99,200000-200099"
    status, got, body = await edge.get("/o", Range=header)
    await settled(edge)
    assert (status, got["Cache-Status"]) == (206, "edgecache; fwd=partial")
    parts = parse_multipart(body, got["Content-Type"])
    assert [data for _, data in parts] == [DATA[:100], DATA[200000:200100]]
    assert meter.deltas() == miss("2xx", "cold", cache="partial")
    assert origin.range_hits("/o") == [f"bytes=0-{SLICE - 1}", f"bytes={3 * SLICE}-{4 * SLICE - 1}"]
    # Both slices stored now: the same request is a hit.
    status, got, _ = await edge.get("/o", Range=header)
    await settled(edge)
    assert (status, got["Cache-Status"]) == (206, "edgecache; hit")
    assert meter.deltas() == hit()
    assert origin.hits["/o"] == 2


async def test_a_suffix_range_with_fetched_slices_is_partial(edge: Edge, origin: Origin) -> None:
    meter = Meter()
    assert await ask(edge, "/o", Range="bytes=0-99") == (206, "edgecache; fwd=uri-miss; stored", DATA[:100])
    meter.deltas()
    # The last 200 bytes straddle slices 4 and 5: neither was fetched yet.
    tail = DATA[-200:]
    assert (len(DATA) - 200) // SLICE == 4
    assert await ask(edge, "/o", Range="bytes=-200") == (206, "edgecache; fwd=partial", tail)
    assert meter.deltas() == miss("2xx", "cold", cache="partial")
    assert await ask(edge, "/o", Range="bytes=-200") == (206, "edgecache; hit", tail)
    assert meter.deltas() == hit()
    assert origin.hits["/o"] == 2


async def test_an_uncacheable_answer_is_one_miss(edge: Edge, origin: Origin) -> None:
    origin.put("/private", b"p" * 5000, headers={"Cache-Control": "private"})
    meter = Meter()
    for _ in range(2):
        assert await ask(edge, "/private") == (200, 'edgecache; fwd=uri-miss; detail="private"', b"p" * 5000)
        assert meter.deltas() == miss("2xx", "uncacheable")
    assert origin.hits["/private"] == 2


async def test_an_expired_entry_is_one_expired_miss(edge: Edge, origin: Origin) -> None:
    origin.put("/short", b"s" * 3000, headers={"Cache-Control": "max-age=0"}, etag='"s1"')
    meter = Meter()
    assert await ask(edge, "/short") == (200, "edgecache; fwd=uri-miss; stored", b"s" * 3000)
    assert meter.deltas() == miss("2xx", "cold")
    origin.put("/short", b"t" * 3000, headers={"Cache-Control": "max-age=0"}, etag='"s2"')
    assert await ask(edge, "/short") == (200, "edgecache; fwd=stale; stored", b"t" * 3000)
    assert meter.deltas() == miss("2xx", "expired", cache="expired")
    # The same version again: the origin's 304 revalidates the entry, a hit of sorts and no miss.
    assert await ask(edge, "/short") == (200, "edgecache; fwd=stale; fwd-status=304", b"t" * 3000)
    assert meter.deltas() == {("requests", "GET", "2xx", "revalidated"): 1}


async def test_fwd_says_why_the_request_went_forward(edge: Edge, origin: Origin) -> None:
    """RFC 9211 2.2: a fresh entry that the request's own directives kept from use (no-cache, Pragma: no-cache,
    max-age=0) went forward because of the request, fwd=request, not fwd=stale (it was not stale), whether the
    origin confirmed it (304) or sent a new version. Both paths (the fast path's revalidations are its own)."""
    origin.put("/fresh", b"f" * 3000, headers={"Cache-Control": "max-age=600"}, etag='"f1"')
    assert await ask(edge, "/fresh") == (200, "edgecache; fwd=uri-miss; stored", b"f" * 3000)
    for fields in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cache-Control": "max-age=0"}):
        confirmed = (200, "edgecache; fwd=request; fwd-status=304", b"f" * 3000)
        assert await ask(edge, "/fresh", **fields) == confirmed, fields
    assert await ask(edge, "/fresh") == (200, "edgecache; hit", b"f" * 3000)
    origin.put("/fresh", b"g" * 3000, headers={"Cache-Control": "max-age=600"}, etag='"f2"')
    new = (200, "edgecache; fwd=request; stored", b"g" * 3000)
    assert await ask(edge, "/fresh", **{"Cache-Control": "no-cache"}) == new
    assert origin.hits["/fresh"] == 5


async def test_an_evicted_object_is_evicted_and_a_new_one_cold(origin: Origin, tmp_path: Path) -> None:
    for mode in ("fast", "framework"):
        # Room for a few objects in memory (an eighth of the tier at most per slice) and on disk.
        # Built whole, not replace()d: the disk tier's budget must be the one given here.
        cache = CacheSettings(tmp_path / mode, memory_bytes=8 * SLICE, disk_bytes=16 * SLICE, slice_bytes=SLICE)
        config = replace(make_config(tmp_path / mode, [origin.url]), cache=cache, fast_path=mode == "fast")
        async with start_edge(config) as edge:
            paths = [f"/{mode}/fill/{i}" for i in range(40)]
            for i, p in enumerate(paths):
                origin.put(p, bytes([i]) * (2 * SLICE))
            meter = Meter()
            for p in paths:
                assert (await ask(edge, p))[0] == 200
            assert meter.deltas() == {("requests", "GET", "2xx", "miss"): 40, ("misses", "cold"): 40}
            # The first object's slices are gone from both tiers; its metadata is still known.
            first = paths[0]
            key = f"videos|video.test|{first}"
            meta = edge.node.store.peek_meta(key)
            assert meta is not None
            assert await edge.node.store.missing(key, meta, [0, 1]) == [0, 1]
            status, cache_status, body = await ask(edge, first)
            assert (status, body) == (200, bytes([0]) * (2 * SLICE)), mode
            assert cache_status == "edgecache; fwd=partial", mode
            assert meter.deltas() == miss("2xx", "evicted", cache="partial"), mode
            assert origin.hits[first] == 2
            # One never asked for is cold.
            origin.put(f"/{mode}/new", b"n" * 1000)
            assert await ask(edge, f"/{mode}/new") == (200, "edgecache; fwd=uri-miss; stored", b"n" * 1000)
            assert meter.deltas() == miss("2xx", "cold"), mode


@pytest.mark.parametrize("mode", ["fast", "framework"])
async def test_forwarded_hit_and_forwarded_miss(origin: Origin, tmp_path: Path, mode: str) -> None:
    configs = [replace(c, fast_path=mode == "fast") for c in cluster_configs(origin, tmp_path)]
    origin.put("/fw", DATA)
    owner = owner_of(configs, "/fw")
    async with started(configs) as nodes:
        forwarder = next(n for n in nodes if n.node.cluster is not None and n.node.cluster.self_id != owner)
        meter = Meter()
        peer = ("requests", "GET", "2xx", "peer")
        # The owner's member first (RFC 9211: the cache nearest the origin), then the forwarding node's.
        status, got, body = await forwarder.get("/fw")
        await settled(*nodes)
        assert (status, body) == (200, DATA)
        assert got["Cache-Status"] == 'edgecache; fwd=uri-miss; stored, edgecache; fwd=miss; detail="peer"'
        assert meter.deltas() == {peer: 1, **miss("2xx", "cold")}
        status, got, body = await forwarder.get("/fw")
        await settled(*nodes)
        assert (status, body) == (200, DATA)
        assert got["Cache-Status"] == 'edgecache; hit, edgecache; fwd=miss; detail="peer"'
        assert meter.deltas() == {peer: 1, **hit()}
    assert origin.hits["/fw"] == 1


async def test_fwd_request_is_for_a_fresh_entry_the_request_kept_from_use(edge: Edge, origin: Origin) -> None:
    """RFC 9211 2.2: `request` was judged by the request's directives alone. A stale entry a no-cache request
    revalidated said fwd=request though it went forward for being stale (fwd=stale); a fresh one that a max-age
    below its age or a min-fresh beyond its freshness kept from use said fwd=stale though it was fresh. The entry's
    freshness when the request found it decides, not what the revalidation made of it. Both paths."""
    origin.put("/aged", b"a" * 3000, headers={"Cache-Control": "max-age=600", "Age": "300"}, etag='"a1"')
    assert await ask(edge, "/aged") == (200, "edgecache; fwd=uri-miss; stored", b"a" * 3000)
    for fields in ({"Cache-Control": "max-age=100"}, {"Cache-Control": "min-fresh=400"}):
        assert await ask(edge, "/aged", **fields) == (200, "edgecache; fwd=request; fwd-status=304", b"a" * 3000)
    assert await ask(edge, "/aged", **{"Cache-Control": "max-age=1000"}) == (200, "edgecache; hit", b"a" * 3000)
    origin.put("/aged", b"b" * 3000, headers={"Cache-Control": "max-age=600", "Age": "300"}, etag='"a2"')
    new = (200, "edgecache; fwd=request; stored", b"b" * 3000)
    assert await ask(edge, "/aged", **{"Cache-Control": "min-fresh=400"}) == new
    origin.put("/stale", b"s" * 3000, headers={"Cache-Control": "max-age=0"}, etag='"s1"')
    assert await ask(edge, "/stale") == (200, "edgecache; fwd=uri-miss; stored", b"s" * 3000)
    for fields in ({"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cache-Control": "max-age=0"}):
        assert await ask(edge, "/stale", **fields) == (200, "edgecache; fwd=stale; fwd-status=304", b"s" * 3000)
    origin.put("/stale", b"t" * 3000, headers={"Cache-Control": "max-age=0"}, etag='"s2"')
    new = (200, "edgecache; fwd=stale; stored", b"t" * 3000)
    assert await ask(edge, "/stale", **{"Cache-Control": "no-cache"}) == new
    assert (origin.hits["/aged"], origin.hits["/stale"]) == (4, 5)


async def test_fwd_vary_miss_when_a_stored_answer_varies_on_fields_the_request_does_not_match(
    edge: Edge, origin: Origin
) -> None:
    """RFC 9211 2.2: a URI whose stored answer Varies on a field, asked with another value of it, went forward
    for that (fwd=vary-miss); it said fwd=uri-miss, as though nothing were stored for the URI."""
    origin.put("/v", b"v" * 3000, headers={"Cache-Control": "max-age=600", "Vary": "Accept-Language"})
    assert await ask(edge, "/v", **{"Accept-Language": "en"}) == (200, "edgecache; fwd=uri-miss; stored", b"v" * 3000)
    assert await ask(edge, "/v", **{"Accept-Language": "en"}) == (200, "edgecache; hit", b"v" * 3000)
    assert await ask(edge, "/v", **{"Accept-Language": "fr"}) == (200, "edgecache; fwd=vary-miss; stored", b"v" * 3000)
    assert await ask(edge, "/v", **{"Accept-Language": "fr"}) == (200, "edgecache; hit", b"v" * 3000)
    assert await ask(edge, "/v", **{"Accept-Language": "de"}) == (200, "edgecache; fwd=vary-miss; stored", b"v" * 3000)
