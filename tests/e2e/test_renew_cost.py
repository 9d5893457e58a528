"""revalidating.held_on renews the leases a fill holds as its bytes come, at most once every RENEW_SECONDS: never
at a fill's first bytes, whose leases it took a moment before. With server.workers >= 2 every miss of an object
fetched by slice holds its slices' leases, and each paid a disk transaction more for nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecache.proxy import fill
from edgecache.storage.store import Store
from tests.conftest import make_config, start_edge
from tests.origin import Origin

SLICE = 64 * 1024
BODY = os.urandom(2 * SLICE + 100)


async def test_a_fill_quicker_than_a_renewal_renews_no_lease(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin.put("/r.bin", BODY)
    async with start_edge(make_config(tmp_path, [origin.url], slice_bytes=SLICE)) as edge:
        store = edge.node.store
        store.shared = True  # as with server.workers >= 2: the fill leases its slices on the shared disk
        renewed: list[list[str]] = []
        renew = Store.renew

        async def counted(self: Store, leases: list[str], owner: str, seconds: float) -> None:
            renewed.append(leases)
            await renew(self, leases, owner, seconds)

        monkeypatch.setattr(Store, "renew", counted)
        # A renewal first due an hour after the fill began: none within this fill, however slow the machine (one due
        # at its first bytes, as before, renewed its leases at once).
        monkeypatch.setattr(fill, "RENEW_SECONDS", 3600.0)
        status, _, body = await edge.get("/r.bin")
        assert (status, body) == (200, BODY)
        assert origin.hits["/r.bin"] == 1
        assert renewed == []
