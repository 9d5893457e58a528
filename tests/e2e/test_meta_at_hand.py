"""What a node keeps at hand of its objects' metadata grows with cache.memory_headroom (CacheSettings.meta_bytes):
it was a fixed 16 MiB, some 6,000 objects, past which every request for an object read its metadata from the disk
tier in a thread, though its body was in memory (an owner's forwarded hits: ~680 CPU µs against ~30)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.core.entry import ObjectMeta
from edgecache.core.keys import PrimaryRecord
from edgecache.server import open_node
from tests.conftest import make_config

MiB = 2**20
FIELDS = (
    ("ETag", '"v1"'),
    ("Last-Modified", "Sat, 01 Nov 2025 00:00:00 GMT"),
    ("Cache-Control", "public, max-age=3600"),
    ("Content-Type", "video/mp4"),
    ("Date", "Sun, 06 Dec 2026 10:00:00 GMT"),
    ("Accept-Ranges", "bytes"),
)


@pytest.mark.parametrize(("headroom", "held"), [(64 * MiB, False), (256 * MiB, True)])
async def test_the_metadata_kept_at_hand_grows_with_memory_headroom(tmp_path: Path, headroom: int, held: bool) -> None:
    config = make_config(tmp_path / "c", ["http://127.0.0.1:9"])
    config = replace(config, cache=replace(config.cache, memory_headroom=headroom))
    async with open_node(config) as node:
        store = node.store
        assert (store.held.limit, store.meta_entries) == (headroom // 4, max(16_384, headroom // 4 // 1024))
        keys = []
        for i in range(20_000):  # objects of a long tail, as the node's fills leave them
            primary = f"videos|video.test|/tail/{i:06d}/segment.mp4"
            meta = ObjectMeta(200, FIELDS, 4096, '"v1"', True, 1000.0, 1000.0, MiB, (), f"t{i}")
            store.remember_record(primary, PrimaryRecord("g", ()))
            store.remember_meta(primary + "\n", meta)
            store._wrote(primary + "\n", meta)
            keys.append(primary + "\n")
        at_hand = sum(store.peek_meta(k) is not None for k in keys)
        assert (at_hand == len(keys)) is held, at_hand
