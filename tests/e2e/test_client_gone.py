"""A client that leaves while the fast path still has slices of its answer to send is no fault of the node's.

On the node's own event loop (uvloop), writing to a transport already closed raises RuntimeError ("the handler is
closed"), where asyncio's loop ignores the write. An answer whose next slice came from a fill (or a disk read) after
its client had gone wrote it all the same: the connection's task failed with that RuntimeError and was logged as
"fast path: aborting the connection", a WARNING with the node's fault in it, once for each viewer that closed its
player mid-body (436 of them in 8 s of a load test). This runs a real node process, on its real loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin

MiB = 2**20
PIECE = 256 * 1024
DATA = bytes((i * 11 + i // 7919) % 256 for i in range(12 * MiB + 41))


def held_body(release: asyncio.Event) -> Callable[[web.BaseRequest, object], Awaitable[web.StreamResponse | None]]:
    """An origin handler that sends the head and first piece of slices 9 on at once, and the rest of their body
    once `release` is set (the fast path sends no head before the first fetched bytes are in)."""

    async def handler(request: web.BaseRequest, obj: object) -> web.StreamResponse | None:
        asked = request.headers.get("Range", "")
        if not asked.startswith(f"bytes={9 * MiB}-"):
            return None
        resp = web.StreamResponse(status=206, headers={"ETag": '"v1"', "Cache-Control": "public, max-age=3600"})
        resp.headers["Content-Range"] = f"bytes {9 * MiB}-{len(DATA) - 1}/{len(DATA)}"
        resp.content_length = len(DATA) - 9 * MiB
        await resp.prepare(request)
        await resp.write(DATA[9 * MiB : 9 * MiB + PIECE])
        await release.wait()
        for at in range(9 * MiB + PIECE, len(DATA), PIECE):
            await resp.write(DATA[at : at + PIECE])
        await resp.write_eof()
        return resp

    return handler


async def test_a_client_gone_mid_body_is_not_a_warning(origin: Origin, tmp_path: Path) -> None:
    origin.put("/gone.bin", DATA)
    port = free_port()
    args = ("serve", "--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"))
    url = f"http://127.0.0.1:{port}/gone.bin"
    async with edge_process(*args, ready={b"edgecache listening on": 1}) as proc, aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Range": f"bytes=0-{9 * MiB - 1}"}) as r:  # slices 0 to 8 stored
            assert (r.status, await r.read()) == (206, DATA[: 9 * MiB])
        asked = len(origin.seen)
        release = asyncio.Event()
        origin.on_request = held_body(release)  # slices 9 to 12 come from a fill whose body is held back
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /gone.bin HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        # All the cache held, and the first piece fetched: the rest is held at the origin.
        assert await reader.readexactly(9 * MiB + PIECE) == DATA[: 9 * MiB + PIECE]
        assert len(origin.seen) == asked + 1
        writer.close()  # the player is closed
        await writer.wait_closed()
        release.set()
        async with s.get(url) as r:  # the whole object, once the fill has gone through
            assert (r.status, await r.read()) == (200, DATA)
    assert proc.stderr is not None
    log = await proc.stderr.read()
    assert b"aborting the connection" not in log, log.decode(errors="replace")
