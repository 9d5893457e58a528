"""revalidating.being_written: is a copy stored only whole being written by another worker's fill? The entry's lease
alone names no copy: held by another worker's fill of a newer copy, it was taken for the old copy's writer, and a
reader of the old copy waited for slices nobody fetched."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core.entry import ObjectMeta
from edgecache.proxy.fillrequest import FillRequest
from edgecache.proxy.revalidating import being_written, whole_by_another_worker
from edgecache.storage.store import Store
from tests.conftest import make_config, start_edge
from tests.e2e.test_released_copy import fills_started
from tests.origin import Origin

SLICE = 64 * 1024
BODY = os.urandom(2 * SLICE)


async def test_a_lease_held_for_another_copy_is_not_this_copys_writer(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X, a whole copy (no validator), is on the shared disk. A take of the entry's lease (another worker's) while X
    is the copy on the disk: X is being written. The same take once a newer copy Y is on the disk in X's place: X
    is not (before: True, as the lease alone was asked). Nobody holding the lease: not either."""
    async with whole_copy(origin, tmp_path, monkeypatch) as (store, req, x):
        assert not await being_written(store, req, x)
        assert await store.lease_revalidation(req.entry_key, "another-worker", 10.0)
        assert await being_written(store, req, x)
        y = replace(x, token=x.token + "-y")
        await store.put_meta(req.entry_key, y)
        assert (await store.meta_on_disk(req.entry_key)) == y
        assert await being_written(store, req, y)
        assert not await being_written(store, req, x)
        await store.let_go(store.revalidation_lease(req.entry_key), "another-worker")
        assert not await being_written(store, req, y)


async def test_a_slice_the_writer_stored_before_it_ended_is_read_not_fetched_again(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader finds slice 1 of a copy stored only whole missing, and before it asks whether the copy is being
    written, the writer (another worker) stores the slice and ends. whole_by_another_worker() says the slice is
    there (the reader reads it on the disk); before, it said False, and the reader fetched a copy of its own, whose
    bytes could not continue the answer it had begun: cut at 2 MiB of 4 in a fresh CI run
    (test_worker_whole_slow). A slice nobody stores is still not there."""
    async with whole_copy(origin, tmp_path, monkeypatch) as (store, req, x):
        assert not await store.missing(req.entry_key, x, [1])  # stored, its writer gone (no lease held)
        assert await whole_by_another_worker(store, req, x, 1)
        assert not await whole_by_another_worker(store, req, replace(x, token=x.token + "-other"), 1)


@asynccontextmanager
async def whole_copy(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Store, FillRequest, ObjectMeta]]:
    """The real edge with X, a copy stored only whole (no validator), on its disk, that disk shared as with
    server.workers >= 2: its store, the request X was filled for, and X."""
    origin.put("/w.bin", BODY, etag=None, last_modified=None)
    async with start_edge(make_config(tmp_path, [origin.url], slice_bytes=SLICE)) as edge:
        engine, store = edge.node.engine, edge.node.store
        asked = fills_started(engine, monkeypatch)
        status, _, body = await edge.get("/w.bin")
        assert (status, body) == (200, BODY)
        (req,) = asked
        x = await store.meta_on_disk(req.entry_key)
        assert isinstance(x, ObjectMeta)
        assert x.whole
        store.shared = True
        yield store, req, x
