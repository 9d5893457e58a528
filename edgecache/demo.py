"""A small demo origin, so `edgecache serve` on the default config serves something real out of the box.

It writes a few files (a page, a text file and a 64 MiB pseudo-video of deterministic bytes) into a directory
and serves them with aiohttp's FileResponse: ETag, Last-Modified and Range, like a real static origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from pathlib import Path

from aiohttp import web

from edgecache.config import Config
from edgecache.proxy import serverfield
from edgecache.sites import TCPListener

log = logging.getLogger(__name__)

VIDEO_BYTES = 64 * 2**20

PAGE = b"""<!doctype html>
<title>edgecache demo</title>
<h1>edgecache is serving</h1>
<p>This page came from the demo origin through the edge cache. Try:</p>
<pre>
curl -i http://127.0.0.1:8080/hello.txt
curl -s -o /dev/null -D - -H 'Range: bytes=10000000-10000099' http://127.0.0.1:8080/video/demo.bin
</pre>
"""


def deterministic_bytes(size: int, seed: bytes = b"edgecache-demo") -> bytes:
    """Bytes anyone can regenerate to check what the edge served (blake2b in counter mode)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(seed + counter.to_bytes(8, "big"), digest_size=64).digest()
        counter += 1
    return bytes(out[:size])


def write_content(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "video").mkdir(exist_ok=True)
    files = {
        "index.html": PAGE,
        "hello.txt": b"Hello from the edgecache demo origin.\n",
    }
    for name, data in files.items():
        if not (root / name).exists() or (root / name).read_bytes() != data:
            (root / name).write_bytes(data)
    video = root / "video" / "demo.bin"
    if not video.exists() or video.stat().st_size != VIDEO_BYTES:
        tmp = video.with_suffix(".tmp")
        tmp.write_bytes(deterministic_bytes(VIDEO_BYTES))
        tmp.replace(video)


def demo_app(root: Path) -> web.Application:
    # The files are listed once at start: a request can only ever name one of them.
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and p.suffix != ".tmp"}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["path"] or "index.html")
        if path is None:
            raise web.HTTPNotFound(text="not found\n")
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    return app


async def start_demo(config: Config, socks: list[socket.socket] | None, stop_seconds: float) -> web.AppRunner:
    """The demo origin of `config` (demo_origin set), on `socks`: the parent's (listeners.bind_demo), or bound here
    when run without one. `stop_seconds`: how long its calls may go on once it stops."""
    assert config.demo_origin is not None
    root = config.cache.dir.parent / "demo-origin"
    await asyncio.get_running_loop().run_in_executor(None, write_content, root)
    runner = web.AppRunner(demo_app(root), access_log=None, shutdown_timeout=stop_seconds)
    await runner.setup()
    serverfield.follow(runner)
    if socks is None:
        await TCPListener(runner, config.demo_origin.host, config.demo_origin.port).start()
    for sock in socks or []:
        await web.SockSite(runner, sock).start()
    log.info("demo origin on http://%s", config.demo_origin)
    return runner
