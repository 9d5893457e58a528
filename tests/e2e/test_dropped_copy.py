"""A 416 to the fill of a slice of a copy that another request dropped meanwhile (it met the new version first)
tells a new version, not an origin whose ranges disagree. The e2e fuzz (mode excl) met it: two requests' fills of
one stale copy both got the 416 of the now empty object; the first dropped the copy; the second found no copy
to compare the 416's length with, took it for an origin that disagrees with itself, and stored the dropped copy
again, marked to be fetched whole, under a new token. That copy's next revalidation by range was the client's
502 "416 to the range a fill asked for"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core.entry import ObjectMeta
from edgecache.errors import VersionChanged
from edgecache.proxy import reading
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.test_released_copy import fills_started
from tests.origin import Origin

MiB = 2**20
V1 = bytes((i * 7) % 251 for i in range(2 * MiB + 5))


@pytest.mark.parametrize("fast", [True, False])
async def test_a_416_to_a_slice_of_a_dropped_copy_is_a_new_version_not_a_copy_fetched_whole(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    origin.put("/s", V1, headers={"Cache-Control": "max-age=0"})
    config = make_config(tmp_path / "c", [origin.url])
    async with start_edge(replace(config, fast_path=fast)) as edge:
        await check(edge, origin, monkeypatch)


async def check(edge: Edge, origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, store = edge.node.engine, edge.node.store
    asked = fills_started(engine, monkeypatch)
    status, _, body = await edge.get("/s", Range="bytes=0-99")  # slice 0 of v1, stale at once
    assert (status, body) == (206, V1[:100])
    await engine.flush()
    req = asked[0]
    meta = store.peek_meta(req.entry_key)
    assert isinstance(meta, ObjectMeta)
    origin.put("/s", b"", etag='"v2"', headers={"Cache-Control": "max-age=0"})
    await store.drop_version(req.entry_key, meta)  # as the request that met v2 first does
    with pytest.raises(VersionChanged):  # slice 1, for a reader still on v1: a 416 (bytes */0)
        async for _ in reading.read_slice(engine, req, meta, 1, 0, 100, 1):
            pass
    assert store.peek_meta(req.entry_key) is None  # v1 is not stored again
    for _ in range(2):
        status, headers, body = await edge.get("/s", Range="bytes=0-99")
        assert (status, headers["Content-Range"]) == (416, "bytes */0")
        status, headers, body = await edge.get("/s")
        assert (status, headers["ETag"], body) == (200, '"v2"', b"")
