"""A cache directory on tmpfs: its files refuse preadv(RWF_NOWAIT) with EOPNOTSUPP, and the fast path must then
read them the ordinary way, not cut the answer (it sent the head and closed: 0 of the body's bytes)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value

BODY = bytes((i * 13 + i // 509) % 256 for i in range(2 * 2**20 + 777))


def answered() -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": "answered"}) or 0.0


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    # /dev/shm is the tmpfs every Linux machine has; nothing to mount.
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="edgecache-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("send", ["pread", "sendfile"])
async def test_disk_hits_from_tmpfs_are_whole_on_the_fast_path(origin: Origin, shm_dir: Path, send: str) -> None:
    origin.put("/v.bin", BODY)
    config = replace(make_config(shm_dir / "cache", [origin.url], memory_bytes=0), fast_path=True, disk_send=send)
    async with start_edge(config) as edge:
        assert (await edge.get("/v.bin"))[2] == BODY
        await edge.node.engine.flush()
        filled = origin.hits["/v.bin"]
        for _ in range(2):
            before = answered()
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
            try:
                writer.write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\nRange: bytes=1000-2097000\r\n\r\n")
                writer.write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
                async with asyncio.timeout(10):
                    raw = await reader.read(-1)
            finally:
                writer.close()
            first, _, rest = raw.partition(b"\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 206 Partial Content\r\n")
            assert rest[: 2097000 - 1000 + 1] == BODY[1000:2097001]
            second, _, body = rest[2097000 - 1000 + 1 :].partition(b"\r\n\r\n")
            assert second.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == BODY
            assert answered() - before == 2
        assert origin.hits["/v.bin"] == filled  # every answer came from the tmpfs disk
