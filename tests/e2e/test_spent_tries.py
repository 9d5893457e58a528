"""A request whose tries are spent while the origin is fine is relayed from one origin request, never answered 502.

Two workers share the disk tier; under purge storms, a slice an answer needs was found being fetched by another
worker three times, and each of those fetches ended without storing it (a purge overtook it): the reader gave up,
and the viewer got 502 "origin failed: slice 0 could not be read" (the e2e fuzz, mode two, about once in 25,000
requests). The origin had failed nothing. Now the reader's three tries are the request's (errors.Unread,
core.churn.next_try): it is relayed, one origin request for what the client asked, streamed and never stored, told
as a miss whose tries were spent (detail="tries-spent"), on either path. So is a request whose three tries each got
a 304 from another worker's copy that a purge then dropped before its next look-up: 502 "no answer in 3 tries: each
a 304 or another variant's answer" before (the fuzz, on a GET and a HEAD).

The other worker is played in this process, as a node of several workers: each time the reader would lease the
slice, another fetch holds it (Store.lease_run leases none), and its lease goes with nothing stored
(Store.wait_for_peer returns, the slice still missing); each miss finds the other worker's copy on the disk
(revalidating.by_another_worker, the real one, reads it), and the other worker's purge is caught up on after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache import metrics
from edgecache.core.entry import ObjectMeta
from edgecache.proxy import engine as engine_module
from edgecache.proxy.fill import Fill
from edgecache.proxy.fillhead import new_token
from edgecache.proxy.fillregistry import FillRegistry
from edgecache.proxy.fillrequest import FillRequest
from edgecache.storage.slicenames import meta_name
from edgecache.storage.store import Store
from tests.conftest import Edge, make_config, start_edge
from tests.origin import Origin
from tests.wire import fast_path_outcomes

SLICE = 16 * 1024
DATA = os.urandom(3 * SLICE + 17)
PATHS = [pytest.param(True, id="fast"), pytest.param(False, id="framework")]


def misses(cause: str) -> float:
    return float(metrics.MISSES.labels("videos", cause).wrapped._value.get())


@asynccontextmanager
async def with_slice_1(origin: Origin, tmp_path: Path, fast: bool) -> AsyncIterator[Edge]:
    """A node of two workers' settings (its store shared), /s.bin's copy stored with slice 1 alone."""
    origin.put("/s.bin", DATA)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), workers=2)
    async with start_edge(replace(config, fast_path=fast)) as edge:
        assert edge.node.store.shared
        status, _, body = await edge.get("/s.bin", Range=f"bytes={SLICE}-{SLICE + 99}")
        assert (status, body) == (206, DATA[SLICE : SLICE + 100])
        assert origin.range_hits("/s.bin") == [f"bytes={SLICE}-{2 * SLICE - 1}"]
        yield edge


def fetched_elsewhere(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each lease of slice 0 is another worker's, whose fetch ends unstored; what the reader did, in order."""
    store, seen = edge.node.store, []

    async def none_leased(key: str, meta: ObjectMeta, indices: list[int], seconds: float) -> int:
        assert indices[0] == 0
        seen.append("lease")
        return 0

    async def ended_unstored(key: str, meta: ObjectMeta, index: int, *args: object) -> None:
        seen.append("wait")

    monkeypatch.setattr(store, "lease_run", none_leased)
    monkeypatch.setattr(store, "wait_for_peer", ended_unstored)
    return seen


@pytest.mark.parametrize("fast", PATHS)
async def test_a_slice_whose_fetches_all_end_unstored_is_relayed_not_502(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """A range of slice 0, which three fetches of another worker's leave unstored: 206 with the exact bytes from
    one origin request (the client's range, relayed), after the reader's three tries and no more; nothing stored.
    Before, 502 "origin failed: slice 0 could not be read", after the same three tries."""
    async with with_slice_1(origin, tmp_path, fast) as edge:
        seen = fetched_elsewhere(edge, monkeypatch)
        before, handed_off = len(origin.seen), fast_path_outcomes()["handed_off"]
        unstored, changing = misses("uncacheable"), misses("changing")
        status, headers, body = await edge.get("/s.bin", Range="bytes=0-99")
        assert (status, body) == (206, DATA[:100]), body[:200]
        assert headers["Content-Range"] == f"bytes 0-99/{len(DATA)}"
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="tries-spent"'
        assert [s.headers.get("Range") for s in origin.seen[before:]] == ["bytes=0-99"]
        assert seen == ["lease", "wait"] * 3
        assert (misses("uncacheable"), misses("changing")) == (unstored + 1, changing)  # its answer is not stored
        assert fast_path_outcomes()["handed_off"] == handed_off  # the fast path relays it itself (issue 14)
        monkeypatch.undo()  # the other worker gone: the relay stored nothing, so slice 0 is fetched now
        status, headers, body = await edge.get("/s.bin", Range="bytes=0-99")
        assert (status, body, headers["Cache-Status"]) == (206, DATA[:100], "edgecache; fwd=partial")
        assert origin.range_hits("/s.bin")[-1] == f"bytes=0-{SLICE - 1}"


def answered_elsewhere_then_purged(
    edge: Edge, monkeypatch: pytest.MonkeyPatch, path: str, copy: ObjectMeta
) -> list[str]:
    """Each miss of `path` is answered by another worker's `copy` (its fill just stored one on the shared disk:
    revalidating.by_another_worker hands the miss that copy as a 304), and a purge of `path` follows before the
    request's next look-up, under whose new key nothing is stored. The keys each miss was answered under."""
    store, real = edge.node.store, engine_module.by_another_worker
    answered: list[str] = []

    async def then_purged(
        store_: Store, fills: FillRegistry, fill: Fill, req: FillRequest, validate: ObjectMeta | None
    ) -> bool:
        if req.path != path:
            return await real(store_, fills, fill, req, validate)
        now = time.time()
        other = replace(copy, request_time=now, response_time=now, token=new_token())
        await store.disk.put(meta_name(req.entry_key), other.to_bytes())  # the other worker's fill stored it
        assert await real(store_, fills, fill, req, validate)  # and answers this miss
        answered.append(req.entry_key)
        await store.invalidate(req.primary)  # the other worker's purge, caught up on here
        return True

    monkeypatch.setattr(engine_module, "by_another_worker", then_purged)
    return answered


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("fast", PATHS)
async def test_misses_each_answered_by_a_copy_a_purge_then_drops_are_relayed_not_502(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool, method: str
) -> None:
    """A miss's three tries each get a 304 from another worker's copy (FillHead.worker), and each time a purge
    drops that copy before the next look-up (the e2e fuzz, mode two, on a HEAD and a GET). Out of tries, the
    request is relayed from one origin request: 200 and the exact bytes (none for HEAD), told as tries spent.
    Before, 502 "no answer in 3 tries: each a 304 or another variant's answer"."""
    origin.put("/o.bin", DATA)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), workers=2)
    async with start_edge(replace(config, fast_path=fast)) as edge:
        store, started = edge.node.store, fills_started(edge, monkeypatch)
        assert (await edge.get("/o.bin"))[::2] == (200, DATA)  # a copy as the other worker stores it
        (warm,) = started
        copy = store.peek_meta(warm.entry_key)
        assert copy is not None
        await store.invalidate(warm.primary)  # a purge: the next request is a miss
        answered = answered_elsewhere_then_purged(edge, monkeypatch, "/o.bin", copy)
        before, unstored, handed_off = len(origin.seen), misses("uncacheable"), fast_path_outcomes()["handed_off"]
        async with edge.session.request(method, edge.url + "/o.bin", headers={"Host": "video.test"}) as r:
            status, headers, body = r.status, r.headers, await r.read()
        assert (status, body) == (200, DATA if method == "GET" else b""), body[:200]
        assert headers["Content-Length"] == str(len(DATA))
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="tries-spent"'
        assert [(s.method, s.headers.get("Range")) for s in origin.seen[before:]] == [(method, None)]  # the relay
        assert len(answered) == len(set(answered)) == 3  # three tries, each under the key a purge had made
        assert misses("uncacheable") == unstored + 1
        assert fast_path_outcomes()["handed_off"] == handed_off  # the fast path tries again and relays it (issue 14)


def fills_started(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> list[FillRequest]:
    """The request of each fill the edge starts from now on (its Engine.start_fill, spied on)."""
    engine, asked = edge.node.engine, []
    start_fill = engine.start_fill

    def recorded(req: FillRequest, first: int, last: int | None, *args: object, **kw: object) -> Fill:
        asked.append(req)
        return start_fill(req, first, last, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "start_fill", recorded)
    return asked


@pytest.mark.parametrize("fast", PATHS)
async def test_a_cold_fill_whose_416_contradicts_a_copy_stored_meanwhile_starts_again(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """A range miss's fill asks a later slice; the origin's new version is shorter (its 416 tells the length), and
    meanwhile another worker stored a copy of the old, longer version: the 416 contradicts that copy
    (VersionChanged before the head). The request starts again as the full handler's loop does, and ends as the 416
    of the version the origin has: on the fast path too, which handed such a request to aiohttp before."""
    origin.put("/c.bin", DATA)
    config = replace(make_config(tmp_path / "c", [origin.url], fill_slices=1, slice_bytes=SLICE), workers=2)
    async with start_edge(replace(config, fast_path=fast)) as edge:
        store, started = edge.node.store, fills_started(edge, monkeypatch := pytest.MonkeyPatch())
        with monkeypatch.context():
            assert (await edge.get("/c.bin", Range="bytes=0-99"))[::2] == (206, DATA[:100])
        (first,) = started
        copy = store.peek_meta(first.entry_key)
        assert copy is not None
        await store.delete_meta(first.entry_key)  # not at hand: the next request is decided cold
        origin.put("/c.bin", DATA[:100], etag='"v2"')
        real = edge.node.engine.start_fill

        def stored_meanwhile(req: FillRequest, *args: object, **kw: object) -> Fill:
            if not started[1:]:  # the other worker's copy of the old version lands as the first fill starts
                store.remember_meta(req.entry_key, copy)
            started.append(req)
            return real(req, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(edge.node.engine, "start_fill", stored_meanwhile)
        before, handed_off = len(origin.seen), fast_path_outcomes()["handed_off"]
        status, headers, body = await edge.get("/c.bin", Range=f"bytes={SLICE}-{SLICE + 99}")
        monkeypatch.undo()
        assert (status, headers["Content-Range"], body) == (416, "bytes */100", b"")
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; detail="changing"'
        # Two fills that met the old copy (each a new version met: core.churn), then the relay of the client's range
        ranges = [s.headers.get("Range") for s in origin.seen[before:]]
        assert ranges == [f"bytes={SLICE}-{2 * SLICE - 1}"] * 2 + [f"bytes={SLICE}-{SLICE + 99}"]
        assert fast_path_outcomes()["handed_off"] == handed_off  # the fast path tries again itself (issue 14)
