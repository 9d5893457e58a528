"""A worker that stops mid-fill lets go of the leases its fills held, when it cancels them, not when it is gone.

With several workers, a fill holds the entry's lease until its head (or a whole copy's end) and a lease on each slice
it brings until the slice is written; the other workers wait on them. A stop cancels the fills (Engine.close), and a
cancelled fill dropped none: they stayed until the process was gone (a lease names its process), and a stopping
worker lives on after its fills, saving memory to disk for up to cache.save_on_stop (10 s) with exclusive tiers, or
until their LEASE_SECONDS ran out. Those waits were for bytes nobody was fetching any more.

In the process (a node of two workers' settings: its store is shared), since what matters is the time between the
cancel and the exit, which a separate process would end too fast to see: the leases, looked at on the disk as
another worker does, once close has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from edgecache.storage.disk import lease_name
from edgecache.storage.store import slice_name
from tests.conftest import make_config, start_edge
from tests.origin import Origin

MiB = 2**20
DATA = bytes((i * 3 + i // 1019) % 256 for i in range(4 * MiB + 55))


async def test_a_stop_lets_go_of_the_leases_of_the_fills_it_cancels(origin: Origin, tmp_path: Path) -> None:
    """/h's fill waits for the origin's head (it holds the entry's lease), /b's has sent 100 bytes of its body (it
    holds its first slices' leases). The engine closes, as a stop does: none of those leases is held after."""
    origin.put("/h.bin", DATA)
    origin.put("/b.bin", DATA)
    head_held, body = asyncio.Event(), asyncio.Event()

    async def hold(request: web.BaseRequest, _obj: object) -> web.StreamResponse | None:
        if request.path == "/h.bin":
            head_held.set()
            await body.wait()  # until the test ends: its fill is cancelled before
        resp = web.StreamResponse(headers={"ETag": '"v1"', "Cache-Control": "public, max-age=3600"})
        resp.content_length = len(DATA)
        await resp.prepare(request)
        await resp.write(DATA[:100])
        await body.wait()
        return resp

    origin.on_request = hold
    config = replace(make_config(tmp_path / "cache", [origin.url], fill_slices=1), workers=2)
    async with start_edge(config) as edge:
        store = edge.node.store
        assert store.shared  # as in every node of several workers
        entries: list[str] = []
        lease_revalidation = store.lease_revalidation

        async def noted(entry_key: str, owner: str, seconds: float) -> bool:
            entries.append(entry_key)
            return await lease_revalidation(entry_key, owner, seconds)

        store.lease_revalidation = noted  # type: ignore[method-assign]
        headers = {"Host": "video.test"}
        waiting = asyncio.ensure_future(edge.session.get(edge.url + "/h.bin", headers=headers))
        try:
            async with edge.session.get(edge.url + "/b.bin", headers=headers) as r:
                async with asyncio.timeout(10):  # pumped once its head was taken: its first slices are leased
                    assert await r.content.readexactly(100) == DATA[:100]
                    await head_held.wait()  # asked after the entry's lease was taken
                b, h = sorted(entries)
                version = store.peek_meta(b)
                assert version is not None
                leases = [store.revalidation_lease(h)]
                leases += [lease_name(slice_name(b, version.slice_version, i)) for i in range(2)]
                assert await store.disk.contains(leases) == [True, True, True]
                await edge.node.engine.close()
                assert await store.disk.contains(leases) == [False, False, False]
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    await r.read()  # cut short: its fill was cancelled
        finally:
            body.set()
            async with asyncio.timeout(10):
                with contextlib.suppress(aiohttp.ClientError):
                    (await waiting).release()
