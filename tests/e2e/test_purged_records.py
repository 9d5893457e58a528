"""cache.purged_records bounds the records of purged URLs each disk keeps (standard 3): past it the oldest goes, and
the URL it protected is keyed by its bucket's count of drops from then on (storage.diskrecords). Its purged bytes
are never served again, an object of an untouched bucket stays a hit, and one sharing the bucket is a miss once.
The real edge and admin API, a real origin counting requests, the disk read again after a restart."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp

from edgecache.config import Config
from edgecache.core.keys import digest, make_key
from edgecache.storage.diskindex import RECORDS, bucket_of
from tests.e2e.adminkit import AdminNode, admin_node, node_config
from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_workers import READY, bodies, two_workers
from tests.e2e.test_workers import purge as purge_at
from tests.origin import Origin

BOUND = 2


def bucket(path: str) -> int:
    """The bucket of the record of `path` on the site "videos" (its primary key as make_key gives it)."""
    return bucket_of("v:" + digest(f"videos|video.test|{path}"))


def records(directory: Path) -> int:
    with sqlite3.connect(directory / "cache.db") as con:
        return int(con.execute("SELECT count(*) FROM edge_index WHERE queue = ?", (RECORDS,)).fetchone()[0])


def paths(origin: Origin) -> tuple[str, str, str, list[str]]:
    """The purged object, one in a bucket no drop touches, one sharing the purged one's bucket, and the fillers whose
    purges push its record out (in buckets of their own)."""
    purged = "/p.bin"
    assert make_key("videos", "video.test", purged, ()).primary == "videos|video.test|/p.bin"
    fillers = [p for p in (f"/f{i}.bin" for i in range(100)) if bucket(p) != bucket(purged)][: BOUND + 3]
    touched = {bucket(purged), *map(bucket, fillers)}
    kept = next(p for p in (f"/k{i}.bin" for i in range(100)) if bucket(p) not in touched)
    shared = next(p for p in (f"/c{i}.bin" for i in range(400_000)) if bucket(p) == bucket(purged))
    for path in (purged, kept, shared, *fillers):
        origin.put(path, f"old {path} ".encode() * 300, etag='"old"')
    return purged, kept, shared, fillers


@contextlib.asynccontextmanager
async def node(cfg: Config) -> AsyncIterator[AdminNode]:
    async with admin_node(cfg) as n:
        yield n


async def purge(n: AdminNode, path: str) -> None:
    status, body = await n.call("POST", "/purge", json={"url": f"http://video.test{path}"})
    assert status == 200, body


async def test_a_dropped_record_never_brings_back_the_purged_bytes(origin: Origin, tmp_path: Path) -> None:
    purged, kept, shared, fillers = paths(origin)
    cfg = node_config(origin, tmp_path / "c")
    cfg = replace(cfg, cache=replace(cfg.cache, purged_records=BOUND))
    async with node(cfg) as n:
        for path in (purged, kept, shared):  # stored before any purge: keyed with no generation
            assert (await n.edge.get(path))[::2] == (200, f"old {path} ".encode() * 300)
        origin.put(purged, b"new " * 300, etag='"new"')
        await purge(n, purged)
        for i, path in enumerate(fillers):
            await purge(n, path)
            assert records(tmp_path / "c") == BOUND, i  # the purged URL's record goes at the second filler's
    hits = origin.hits.copy()
    async with node(cfg) as n:  # a restart: nothing held in memory, the buckets' counts read from the disk
        for _ in range(2):
            assert (await n.edge.get(purged))[::2] == (200, b"new " * 300)
            assert (await n.edge.get(kept))[::2] == (200, f"old {kept} ".encode() * 300)
            assert (await n.edge.get(shared))[::2] == (200, f"old {shared} ".encode() * 300)
    assert origin.hits - hits == {purged: 1, shared: 1}  # each once; the untouched bucket's object a hit


async def test_every_worker_keys_a_dropped_url_by_its_bucket(origin: Origin, tmp_path: Path) -> None:
    """Two workers on one disk: the admin API's worker drops the record; the other, which catches up on the purges
    (storage.epoch) and so reads the disk again, keys the URL by the bucket the drop counted: never the copy stored
    before the purge, which it would find under no generation."""
    purged, kept, _, fillers = paths(origin)
    port, admin = free_port(), free_port()
    cfg = two_workers(tmp_path, origin, port, admin)
    bounded = f"stats_interval = 0.5\npurged_records = {BOUND}\n"
    cfg.write_text(cfg.read_text().replace("stats_interval = 0.5\n", bounded))
    async with edge_process("serve", "--config", str(cfg), ready=READY), aiohttp.ClientSession() as s:
        assert await bodies(s, port, purged) == {f"old {purged} ".encode() * 300}
        assert await bodies(s, port, kept) == {f"old {kept} ".encode() * 300}
        origin.put(purged, b"new " * 300, etag='"new"')
        for path in (purged, *fillers):
            await purge_at(s, admin, {"url": f"http://video.test{path}"})
        assert records(tmp_path / "c") == BOUND
        hits = origin.hits.copy()
        assert await bodies(s, port, purged) == {b"new " * 300}
        assert await bodies(s, port, kept) == {f"old {kept} ".encode() * 300}
        # The new bytes fetched once per worker at most (each keys it its own way: the admin API's worker by the
        # record it still holds, the other by the bucket); the untouched bucket's object never.
        assert set(origin.hits - hits) == {purged}
        assert (origin.hits - hits)[purged] in (1, 2)
