"""What operators see: /metrics, health, the access log, and a real process serving them."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.e2e.procs import edge_process, free_port
from tests.origin import Origin


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (exact text-format parsing)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


async def test_admin_metrics_health_and_access_log(origin: Origin, tmp_path: Path) -> None:
    data = b"m" * 3_000_000
    origin.put("/m.bin", data)
    port, admin = free_port(), free_port()
    log_path = tmp_path / "access.log"
    async with edge_process(
        "serve",
        "--origin",
        origin.url,
        "--listen",
        f"127.0.0.1:{port}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--admin",
        f"127.0.0.1:{admin}",
        "--access-log",
        str(log_path),
        ready={b"admin listening on": 1},
    ):  # the admin listener starts last
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin}/healthz") as r:
                assert (r.status, await r.text()) == (200, "ok\n")
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert (r.status, await r.text()) == (200, "ready\n")
            for _ in range(3):
                async with s.get(f"http://127.0.0.1:{port}/m.bin", headers={"Range": "bytes=0-99"}) as r:
                    assert (r.status, await r.read()) == (206, data[:100])
            async with s.get(f"http://127.0.0.1:{port}/missing") as r:
                assert r.status == 404
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 404  # the admin API is never on the client listener: this went to origin
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
        assert metric(text, "edgecache_requests_total", site="origin", cache_status="hit") == 2
        assert metric(text, "edgecache_requests_total", site="origin", cache_status="miss") == 3
        assert metric(text, "edgecache_served_bytes_total", source="memory") == 200
        assert metric(text, "edgecache_served_bytes_total", source="origin") >= 100
        assert metric(text, "edgecache_origin_requests_total", site="origin", status_class="2xx") == 1
        assert metric(text, "edgecache_misses_total", cause="cold") == 3
        assert metric(text, "edgecache_build_info") == 1
        assert "/m.bin" not in text  # never a URL in a label
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(x["path"], x["status"], x["cache"]) for x in lines] == [
        ("/m.bin", 206, "miss"),
        ("/m.bin", 206, "hit"),
        ("/m.bin", 206, "hit"),
        ("/missing", 404, "miss"),
        ("/metrics", 404, "miss"),
    ]
    assert lines[0]["range"] == "bytes=0-99"
    assert lines[0]["bytes"] == 100
    assert lines[0]["origin_ms"] is not None
    assert len({x["id"] for x in lines}) == 5


async def test_metrics_add_up_across_worker_processes(origin: Origin, tmp_path: Path) -> None:
    origin.put("/w", b"w" * 1000)
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[cache]\ndir = "{tmp_path / "c"}"\ndisk = "64MiB"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    )
    async with edge_process(
        "serve", "--config", str(cfg), ready={b"admin listening on": 1, b"edgecache listening on": 2}
    ):  # both workers
        async with aiohttp.ClientSession() as s:
            for _ in range(40):  # new connections spread over both workers (SO_REUSEPORT)
                async with s.get(
                    f"http://127.0.0.1:{port}/w", headers={"Host": "video.test", "Connection": "close"}
                ) as r:
                    assert await r.read() == b"w" * 1000
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
        assert metric(text, "edgecache_requests_total", site="videos") == 40
        assert metric(text, "edgecache_build_info") == 1
        # Each worker has its own memory tier but they share the disk tier: at most one origin fetch per worker.
        assert 1 <= origin.hits["/w"] <= 2
