"""What the fast path counts of its hits from memory, exactly: one request, one time to first byte and one answer
of the fast path each, and their body bytes as the site's and as the memory tier's (proxy.observe.Tally, one
grouped update per answer)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import exchange

SMALL = bytes(range(256)) * 40  # 10 KiB: one slice
BIG = bytes((i * 7 + i // 251) % 256 for i in range(3 * 2**20 + 12345))  # 4 slices of 1 MiB
HIT = {"site": "videos", "status_class": "2xx", "cache_status": "hit"}
SERIES = {
    "get": ("edgecache_requests_total", HIT | {"method": "GET"}),
    "head": ("edgecache_requests_total", HIT | {"method": "HEAD"}),
    "ttfb": ("edgecache_ttfb_seconds_count", {"cache_status": "hit"}),
    "answered": ("edgecache_fast_path_total", {"outcome": "answered"}),
    "site": ("edgecache_site_served_bytes_total", {"site": "videos", "upstream": "cache"}),
    "memory": ("edgecache_served_bytes_total", {"source": "memory"}),
    "disk": ("edgecache_served_bytes_total", {"source": "disk"}),
}  # fmt: skip


def snapshot() -> dict[str, float]:
    return {k: sample_value(name, labels) or 0.0 for k, (name, labels) in SERIES.items()}


def get(path: str, *fields: str, method: str = "GET") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: video.test", *fields]) + "\r\n\r\n").encode()


async def test_memory_hits_are_counted_once_each_with_their_bytes(origin: Origin, tmp_path: Path) -> None:
    origin.put("/small", SMALL)
    origin.put("/big", BIG)
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge:
        for path in ("/small", "/big"):
            assert (await edge.get(path))[0] == 200  # the fill
        await edge.node.engine.flush()
        hits = dict(origin.hits)
        before = snapshot()
        heads = [
            get("/small"),
            get("/small", "Range: bytes=0-99"),
            get("/small", method="HEAD"),
            get("/big", "Range: bytes=1048000-2098000"),  # across two slices
            get("/big", "Range: bytes=5-9"),
            get("/small", "Connection: close"),
        ]
        raw = await exchange(edge.port, b"".join(heads))  # one connection: the answers share turns of the loop
        after = snapshot()
        assert dict(origin.hits) == hits
    assert raw.count(b"\r\nCache-Status: edgecache; hit\r\n") == len(heads)
    body = len(SMALL) + 100 + (2098000 - 1048000 + 1) + 5 + len(SMALL)
    assert {k: after[k] - before[k] for k in SERIES} == {
        "get": 5,
        "head": 1,
        "ttfb": 6,
        "answered": 6,
        "site": body,
        "memory": body,
        "disk": 0,
    }
