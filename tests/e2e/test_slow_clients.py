"""A client that never reads: bounded time, its connection cut, and everyone else served meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from pathlib import Path

from tests.conftest import make_config, start_edge
from tests.origin import Origin


async def test_client_that_never_reads_is_cut_and_others_are_served(
    origin: Origin, tmp_path: Path, big_bytes: bytes
) -> None:
    origin.put("/big", big_bytes)
    cfg = replace(make_config(tmp_path / "c", [origin.url]), client_write_timeout=0.5)
    async with start_edge(cfg) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: video.test\r\n\r\n")
        await writer.drain()
        # Meanwhile another client gets the whole object, from the same fill.
        status, _, body = await edge.get("/big")
        assert status == 200
        assert hashlib.sha256(body).digest() == hashlib.sha256(big_bytes).digest()
        # The reader that never read: the edge cuts it once its socket stays full past the write timeout.
        received = 0
        async with asyncio.timeout(30):
            try:
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        writer.close()
        assert received < len(big_bytes)  # cut short, not completed
        assert origin.hits["/big"] == 1
