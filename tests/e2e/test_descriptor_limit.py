"""A worker whose file descriptor limit is below server.max_connections sheds connections with 503, as it does at
max_connections, before it runs out of descriptors.

With a hard limit of 400 and max_connections at its default (20,000), 450 idle connections took every descriptor:
accept() failed, so a new client got no answer at all, and the disks' probe, unable to open its file, took the
disk out of service (every object then fetched from origin) until a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin
from tests.wire import own_error

FILES = 400
IDLE = 450


async def test_connections_past_what_the_descriptors_allow_get_503(origin: Origin, tmp_path: Path) -> None:
    origin.put("/d.bin", b"d" * 1000)
    port, admin = free_port(), free_port()
    args = ("serve", "--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"))
    args += ("--admin", f"127.0.0.1:{admin}")
    async with (
        edge_process(*args, ready={b"edgecache listening on": 1, b"admin listening on": 1}, files=FILES),
        aiohttp.ClientSession() as s,
    ):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(IDLE)]
        try:
            # Read only: the 503 is written as the connection is accepted, and a request sent meanwhile, unread
            # when the node closes, would make the kernel reset the connection before the 503 is read.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(10):
                answer = await reader.read(-1)
            writer.close()
            assert answer == own_error(answer, 503, "too many connections: try again soon")
        finally:
            for _, w in held:
                w.close()
        async with asyncio.timeout(10):
            while True:
                async with s.get(f"http://127.0.0.1:{port}/d.bin", headers={"Host": "any.host"}) as r:
                    if r.status == 200:
                        assert await r.read() == b"d" * 1000
                        break
        async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
        assert "edgecache_disk_up" in text
        assert not [
            line for line in text.splitlines() if line.startswith("edgecache_disk_up") and line.endswith(" 0.0")
        ]
    assert origin.hits["/d.bin"] == 1


CLOSE_WITH_MORE = b"GET /d.bin HTTP/1.1\r\nHost: any.host\r\nConnection: close\r\n\r\nGET /later HTTP/1.1\r\n"


async def test_connections_lingering_after_their_answers_leave_descriptors_for_the_503(
    origin: Origin, tmp_path: Path
) -> None:
    """A connection closed after its answer lingers (proxy.linger) with its descriptor but no longer its place
    under the cap: 300 Connection: close requests that pipelined more, then the cap's connections, took every
    descriptor (400 of 400), and a new client got nothing at all, as before the cap. The lingering ones are
    bounded within what the descriptors leave beside the cap."""
    origin.put("/d.bin", b"d" * 1000)
    port = free_port()
    args = ("serve", "--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"))
    async with edge_process(*args, ready={b"edgecache listening on": 1}, files=FILES):
        lingering = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(CLOSE_WITH_MORE)
            lingering.append((reader, writer))
        for reader, _ in lingering:  # the answer, or a reset past the lingering bound: its seat is let go
            with contextlib.suppress(ConnectionResetError):
                await reader.read(-1)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(IDLE)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(10):
                answer = await reader.read(-1)
            writer.close()
            assert answer == own_error(answer, 503, "too many connections: try again soon")
        finally:
            for _, w in held + lingering:
                w.close()
    assert origin.hits == {"/d.bin": 1}
