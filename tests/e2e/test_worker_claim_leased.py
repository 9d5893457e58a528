"""A new copy's first slices are leased before its metadata is on the disk, where the other workers read both.

With several workers, a fill that names a new copy writes its metadata to the shared disk (leasing.claimed) so that
a request in another worker reads the copy rather than starting one of its own. It took the leases of the slices it
brings only after that write: a request in another worker that read the metadata in between found those slices
neither stored nor leased, and fetched them too. The gap is two disk calls wide, not reachable from outside the
process on purpose; the test looks at the disk, as another worker does, at the moment the metadata is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import digest
from edgecache.storage.disk import lease_name
from edgecache.storage.store import slice_name
from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20
DATA = bytes((i * 5 + i // 509) % 256 for i in range(3 * MiB + 77))


async def test_the_slices_a_fill_brings_are_leased_before_its_metadata_is_written(
    origin: Origin, tmp_path: Path
) -> None:
    """A whole GET of a cold object, fill_slices 1: when its metadata is written, slices 0 and 1 (what the fill
    brings first) are leased on the disk already; 2 and 3 are leased as it reaches them. The answer is exact and
    each slice is fetched once."""
    origin.put("/c.bin", DATA)
    config = replace(make_config(tmp_path / "cache", [origin.url], fill_slices=1), workers=2)
    async with start_edge(config) as edge:
        store = edge.node.store
        assert store.shared  # as in every node of several workers
        claim_meta = store.claim_meta
        leased_when_written: list[list[bool]] = []

        async def spied(key: str, meta: ObjectMeta, more_of: Callable[[ObjectMeta], bool]) -> ObjectMeta:
            names = [lease_name(slice_name(key, meta.slice_version, i)) for i in range(4)]
            leased_when_written.append(await store.disk.contains(names))  # what another worker finds now
            return await claim_meta(key, meta, more_of)

        store.claim_meta = spied  # type: ignore[method-assign]
        status, _, body = await edge.get("/c.bin")
        assert (status, body) == (200, DATA)
        assert leased_when_written == [[True, True, False, False]]
        assert origin.hits["/c.bin"] == 1


async def test_a_fill_that_goes_on_with_another_workers_copy_leases_that_copys_slices(
    origin: Origin, tmp_path: Path
) -> None:
    """Another worker names the copy first (its metadata lands on the disk just before this fill's claim): the fill
    goes on under that copy's name. The leases it took under its own name (nobody else's to wait on) are let go, and
    the slices it brings are leased under the copy's: while its body is held, those are the ones held."""
    origin.put("/o.bin", DATA)
    release = asyncio.Event()

    async def hold_body(request: web.BaseRequest, _obj: object) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"ETag": '"v1"', "Cache-Control": "public, max-age=3600"})
        resp.content_length = len(DATA)
        await resp.prepare(request)
        await resp.write(DATA[:100])
        await release.wait()
        await resp.write(DATA[100:])
        await resp.write_eof()
        return resp

    origin.on_request = hold_body
    config = replace(make_config(tmp_path / "cache", [origin.url], fill_slices=1), workers=2)
    async with start_edge(config) as edge:
        store = edge.node.store
        claim_meta = store.claim_meta
        named: list[tuple[str, ObjectMeta, ObjectMeta]] = []

        async def other_first(key: str, meta: ObjectMeta, more_of: Callable[[ObjectMeta], bool]) -> ObjectMeta:
            other = replace(meta, token="another-workers-copy")
            await store.disk.put("m:" + digest(key), other.to_bytes())  # as another worker's claim just before
            named.append((key, meta, other))
            return await claim_meta(key, meta, more_of)

        store.claim_meta = other_first  # type: ignore[method-assign]
        async with edge.session.get(edge.url + "/o.bin", headers={"Host": "video.test"}) as r:
            try:
                async with asyncio.timeout(10):  # pumped only once the head was taken (and its slices leased)
                    first = await r.content.readexactly(100)
                [(key, ours, other)] = named
                assert ours.slice_version != other.slice_version
                for version, leased in ((ours.slice_version, [False, False]), (other.slice_version, [True, True])):
                    names = [lease_name(slice_name(key, version, i)) for i in range(2)]
                    assert await store.disk.contains(names) == leased
            finally:
                release.set()
            async with asyncio.timeout(10):
                assert (r.status, first + await r.read()) == (200, DATA)
        assert origin.hits["/o.bin"] == 1
        assert not await store.missing(key, other, list(range(other.slice_count)))  # stored under the copy's name
