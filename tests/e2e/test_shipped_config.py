"""config/edgecache.toml, what the README's quick start runs (`edgecache serve`) and operators copy: one worker with
exclusive tiers, serving the demo as the quick start shows, on the test's own ports and cache directory."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from edgecache.config import load
from tests.e2e.procs import ROOT, edge_process, free_port


async def test_the_shipped_config_runs_exclusive_tiers_and_serves_the_quick_starts_demo(tmp_path: Path) -> None:
    text = (ROOT / "config" / "edgecache.toml").read_text()
    port, admin, demo = free_port(), free_port(), free_port()
    for old, new in (
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("127.0.0.1:9180", f"127.0.0.1:{admin}"),
        ("127.0.0.1:8081", f"127.0.0.1:{demo}"),
        ('"../var/cache"', f'"{tmp_path / "cache"}"'),
        ('"../var/log/access.log"', f'"{tmp_path / "access.log"}"'),
    ):
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "edgecache.toml"
    config.write_text(text)
    loaded = load(config)
    assert (loaded.cache.tiers, loaded.workers) == ("exclusive", 1)
    ready = {b"edgecache listening on": 1, b"admin listening on": 1}
    async with edge_process("serve", "--config", str(config), ready=ready), aiohttp.ClientSession() as s:
        statuses = []
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{port}/hello.txt") as r:
                assert r.status == 200
                statuses.append(r.headers["Cache-Status"])
        assert statuses == ["edgecache; fwd=uri-miss; stored", "edgecache; hit"]
        bodies = []
        for _ in range(2):
            url = f"http://127.0.0.1:{port}/video/demo.bin"
            async with s.get(url, headers={"Range": "bytes=10000000-10000099"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == f"bytes 10000000-10000099/{64 * 2**20}"
                bodies.append(await r.read())
        assert len(bodies[0]) == 100
        assert bodies[0] == bodies[1]
