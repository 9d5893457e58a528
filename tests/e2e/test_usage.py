"""Usage by site: served, origin and peer bytes per site in the metrics, the access log's new fields (protocol,
user agent, referer, node, upstream) the same on both paths, and `edgecache usage` totals of that log."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache import cli
from edgecache.config import Config, Site
from edgecache.core.ring import Ring
from tests.conftest import make_config, start_edge
from tests.e2e.adminkit import admin_node, node_config
from tests.e2e.test_cluster import cluster_configs, started
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import exchange, fast_path_outcomes

SLICE = 4096
X = bytes(range(256)) * 4
Y = bytes(range(251)) * 40  # 10040 bytes: three slices
UA = {"User-Agent": "player/1.0", "Referer": "http://portal.test/watch"}


def sample(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


def two_sites(origin: Origin, tmp_path: Path, fast: bool, tag: str) -> Config:
    config = make_config(tmp_path / "cache", [origin.url], slice_bytes=SLICE)
    sites = (
        Site(name=f"{tag}-a", hosts=("a.test",), origins=(origin.url,)),
        Site(name=f"{tag}-b", hosts=("b.test",), origins=(origin.url,)),
    )
    return replace(config, sites=sites, fast_path=fast, access_log=tmp_path / "access.log")


async def fetch(port: int, host: str, path: str, rng: str | None = None) -> tuple[int, bytes]:
    """A GET with UA's fields on a connection of its own: a connection's first request that the fast path does
    not answer hands the whole connection to the full handler, so each request here gets its own."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in UA.items()) + (f"Range: {rng}\r\n" if rng else "")
    raw = await exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def records(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.isascii()
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


FIELDS = (
    "site",
    "method",
    "status",
    "bytes",
    "cache",
    "upstream",
    "protocol",
    "user_agent",
    "referer",
    "node",
    "for_peer",
)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_bytes_by_site_the_log_fields_and_the_usage_totals(
    origin: Origin, tmp_path: Path, fast: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = "usage-fast" if fast else "usage-full"
    a, b = f"{tag}-a", f"{tag}-b"
    origin.put("/x", X)
    origin.put("/y", Y)
    config = two_sites(origin, tmp_path, fast, tag)
    answered = sample("edgecache_fast_path_total", outcome="answered")
    async with start_edge(config) as edge:
        assert await fetch(edge.port, "a.test", "/x") == (200, X)  # a miss
        assert await fetch(edge.port, "a.test", "/x") == (200, X)  # a hit (the fast path's, when on)
        raw = await exchange(edge.port, b"GET /x HTTP/1.0\r\nHost: a.test\r\n\r\n")  # a hit, HTTP/1.0
        assert raw.startswith(b"HTTP/1.0 200 OK\r\n")
        assert raw.endswith(b"\r\n\r\n" + X)
        assert await fetch(edge.port, "b.test", "/y", "bytes=0-99") == (206, Y[:100])  # a range miss
        assert await fetch(edge.port, "b.test", "/y", "bytes=100-199") == (206, Y[100:200])  # a hit
        # Slice 0 is stored, slice 1 is not: the stored entry served, its second slice fetched (partial).
        assert await fetch(edge.port, "b.test", "/y", f"bytes=0-{SLICE + 99}") == (206, Y[: SLICE + 100])
    assert origin.hits == {"/x": 1, "/y": 2}
    # The misses, the three plain hits (HTTP/1.0's too) and the partial one were the fast path's when it is on: its
    # lines below are the same as the full handler's.
    assert sample("edgecache_fast_path_total", outcome="answered") - answered == (6 if fast else 0)
    assert origin.range_hits("/y") == [f"bytes=0-{SLICE - 1}", f"bytes={SLICE}-{2 * SLICE - 1}"]

    served = "edgecache_site_served_bytes_total"
    assert sample(served, site=a, upstream="origin") == len(X)
    assert sample(served, site=a, upstream="cache") == 2 * len(X)
    assert sample(served, site=b, upstream="origin") == 100
    assert sample(served, site=b, upstream="cache") == 100
    assert sample(served, site=b, upstream="cache+origin") == SLICE + 100
    assert sample("edgecache_origin_bytes_total", site=a) == len(X)
    assert sample("edgecache_origin_bytes_total", site=b) == 2 * SLICE
    assert sample("edgecache_origin_requests_total", site=a, status_class="2xx") == 1
    assert sample("edgecache_origin_requests_total", site=b, status_class="2xx") == 2

    node = socket.gethostname()
    seen = [tuple(r[f] for f in FIELDS) for r in records(tmp_path / "access.log")]
    ua, ref = UA["User-Agent"], UA["Referer"]
    assert seen == [
        (a, "GET", 200, len(X), "miss", "origin", "HTTP/1.1", ua, ref, node, False),
        (a, "GET", 200, len(X), "hit", "cache", "HTTP/1.1", ua, ref, node, False),
        (a, "GET", 200, len(X), "hit", "cache", "HTTP/1.0", None, None, node, False),
        (b, "GET", 206, 100, "miss", "origin", "HTTP/1.1", ua, ref, node, False),
        (b, "GET", 206, 100, "hit", "cache", "HTTP/1.1", ua, ref, node, False),
        (b, "GET", 206, SLICE + 100, "partial", "cache+origin", "HTTP/1.1", ua, ref, node, False),
    ]

    assert cli.main(["usage", str(tmp_path / "access.log"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["malformed"] == 0
    assert report["groups"] == {
        a: {
            "requests": 3,
            "served_bytes": 3 * len(X),
            "cache_bytes": 2 * len(X),
            "origin_bytes": len(X),
            "peer_bytes": 0,
            "mixed_bytes": 0,
            "for_peers_requests": 0,
            "for_peers_bytes": 0,
            "prefetch_requests": 0,
            "prefetch_bytes": 0,
            "byte_hit_ratio": round(2 / 3, 6),
        },
        b: {
            "requests": 3,
            "served_bytes": SLICE + 300,
            "cache_bytes": 100,
            "origin_bytes": 100,
            "peer_bytes": 0,
            "mixed_bytes": SLICE + 100,
            "for_peers_requests": 0,
            "for_peers_bytes": 0,
            "prefetch_requests": 0,
            "prefetch_bytes": 0,
            "byte_hit_ratio": round(100 / (SLICE + 300), 6),
        },
    }
    assert report["total"]["served_bytes"] == 3 * len(X) + SLICE + 300


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_hostile_user_agent_and_referer_are_escaped_and_cut(origin: Origin, tmp_path: Path, fast: bool) -> None:
    origin.put("/x", X)
    config = two_sites(origin, tmp_path, fast, "usage-hostile")
    ua = b'"\\\xff\xfe},{"site":"forged"' + b"A" * 2000
    referer = b"http://r.test/\xc3\xa9" + b"\xff" * 1000
    head = b"GET /x HTTP/1.1\r\nHost: a.test\r\nUser-Agent: " + ua + b"\r\nReferer: " + referer
    async with start_edge(config) as edge:
        before = fast_path_outcomes()["handed_off"]
        for _ in range(2):  # a miss, then a hit: values past ASCII are decoded as aiohttp decodes them
            raw = await exchange(edge.port, head + b"\r\nConnection: close\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
            assert raw.endswith(X)
        assert fast_path_outcomes()["handed_off"] == before
    lines = (tmp_path / "access.log").read_bytes().split(b"\n")[:-1]
    assert len(lines) == 2
    for line in lines:
        assert line.isascii()
        assert len(line) < 512 * 6 * 2 + 1024  # each field at most 512 characters, each at most 6 bytes escaped
        record = json.loads(line)
        assert record["site"] == "usage-hostile-a"
        assert record["user_agent"] == ua.decode("utf-8", "surrogateescape")[:512]
        assert record["referer"] == referer.decode("utf-8", "surrogateescape")[:512]


async def test_prefetch_is_totalled_apart_from_viewers(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prefetch job's requests reach the node on its internal socket and were logged and counted as a viewer's:
    a bill or a byte hit ratio from `edgecache usage` and edgecache_site_served_bytes_total took the bytes the node
    fetched for itself as bytes served to viewers (from origin, lowering the hit ratio). Its lines say
    "prefetch": true and are totalled apart; the served-bytes counter leaves them out (edgecache_prefetch_bytes_total
    counts them)."""
    site = Site(name="usage-prefetch", hosts=("pf.test",), origins=(origin.url,))
    origin.put("/pf", X)
    config = replace(node_config(origin, tmp_path / "cache", site), access_log=tmp_path / "access.log")
    async with admin_node(config) as node:
        status, job = await node.call("POST", "/prefetch", json={"urls": ["http://pf.test/pf"]})
        assert status == 202, job
        assert isinstance(job, dict)
        assert (await node.finished(str(job["id"])))["fetched"] == 1
        assert await fetch(node.edge.port, "pf.test", "/pf") == (200, X)  # a viewer's hit
    assert origin.hits["/pf"] == 1
    served = "edgecache_site_served_bytes_total"
    assert (sample(served, site=site.name, upstream="origin"), sample(served, site=site.name, upstream="cache")) == (
        0,
        len(X),
    )
    seen = [(r["cache"], r["upstream"], r["bytes"], r["prefetch"]) for r in records(tmp_path / "access.log")]
    assert seen == [("miss", "origin", len(X), True), ("hit", "cache", len(X), False)]
    assert cli.main(["usage", str(tmp_path / "access.log"), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["groups"][site.name]
    assert totals == {
        "requests": 1,
        "served_bytes": len(X),
        "cache_bytes": len(X),
        "origin_bytes": 0,
        "peer_bytes": 0,
        "mixed_bytes": 0,
        "for_peers_requests": 0,
        "for_peers_bytes": 0,
        "prefetch_requests": 1,
        "prefetch_bytes": len(X),
        "byte_hit_ratio": 1.0,
    }


def cluster(origin: Origin, tmp_path: Path, site: str) -> list[Config]:
    """test_cluster's three nodes, with a site of this test's own and an access log each."""
    return [
        replace(c, sites=(replace(c.sites[0], name=site),), access_log=tmp_path / f"node{i + 1}.log")
        for i, c in enumerate(cluster_configs(origin, tmp_path))
    ]


async def test_a_forward_to_the_owner_is_peer_traffic_not_origin(
    origin: Origin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = "usage-peer"
    configs = cluster(origin, tmp_path, site)
    ring = Ring.of(configs[0].cluster.nodes)  # type: ignore[union-attr]
    path = next(p for p in (f"/p/{i}" for i in range(100)) if ring.owner(f"{site}|video.test|{p}").id == "node2")  # type: ignore[union-attr]
    origin.put(path, Y)
    async with started(configs) as (n1, n2, _):
        status, headers, body = await n1.get(path)  # node1 forwards to node2, which fetches from the origin
        assert (status, body) == (200, Y)
        assert headers["Cache-Status"] == 'edgecache; fwd=uri-miss; stored, edgecache; fwd=miss; detail="peer"'
        assert (await n1.get(path))[::2] == (200, Y)  # forwarded again: node2's hit
        assert (await n2.get(path))[::2] == (200, Y)  # a viewer of node2's own
    assert origin.hits[path] == 1
    # The nodes run in this process: the origin's bytes and request are the owner's alone, counted once.
    assert sample("edgecache_origin_requests_total", site=site, status_class="2xx") == 1
    assert sample("edgecache_origin_bytes_total", site=site) == len(Y)
    assert sample("edgecache_peer_forwarded_requests_total", peer="node2", site=site) == 2
    assert sample("edgecache_peer_forwarded_bytes_total", peer="node2", site=site) == 2 * len(Y)
    # Served bytes are counted once per viewer, where the viewer was served: node2's answers to node1 are not.
    assert sample("edgecache_site_served_bytes_total", site=site, upstream="peer") == 2 * len(Y)
    assert sample("edgecache_site_served_bytes_total", site=site, upstream="cache") == len(Y)
    assert sample("edgecache_site_served_bytes_total", site=site, upstream="origin") == 0
    forwarder, owner = records(tmp_path / "node1.log"), records(tmp_path / "node2.log")
    assert [(r["node"], r["cache"], r["upstream"], r["bytes"], r["for_peer"]) for r in forwarder] == [
        ("node1", "peer", "peer", len(Y), False),
        ("node1", "peer", "peer", len(Y), False),
    ]
    assert [(r["node"], r["cache"], r["upstream"], r["bytes"], r["for_peer"]) for r in owner] == [
        ("node2", "miss", "origin", len(Y), True),
        ("node2", "hit", "cache", len(Y), True),
        ("node2", "hit", "cache", len(Y), False),
    ]
    # Whom each asked (upstream_addr): node1 the owner, the owner the origin once, nobody for its hits.
    owner_addr = next(m.address for m in configs[0].cluster.nodes if m.id == "node2")  # type: ignore[union-attr]
    assert [r["upstream_addr"] for r in forwarder] == [owner_addr, owner_addr]
    assert [r["upstream_addr"] for r in owner] == [origin.url.removeprefix("http://"), None, None]
    # Every node's log together: what the site's viewers were served, each request once.
    assert cli.main(["usage", str(tmp_path / "node1.log"), str(tmp_path / "node2.log"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == {
        site: {
            "requests": 3,
            "served_bytes": 3 * len(Y),
            "cache_bytes": len(Y),
            "origin_bytes": 0,
            "peer_bytes": 2 * len(Y),
            "mixed_bytes": 0,
            "for_peers_requests": 2,
            "for_peers_bytes": 2 * len(Y),
            "prefetch_requests": 0,
            "prefetch_bytes": 0,
            "byte_hit_ratio": round(1 / 3, 6),
        }
    }


async def leave_after_head(port: int, path: str, rng: str = "") -> None:
    """A GET whose client reads the answer's head and goes: a receive buffer of a few KiB holds the body back
    at the node, and the close resets the connection with the body unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        field = f"Range: {rng}\r\n" if rng else ""
        writer.write(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n{field}\r\n".encode())
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n" if rng else b"HTTP/1.1 200 OK\r\n")
    finally:
        writer.transport.abort()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_an_answer_its_client_left_is_logged_with_status_0_and_the_bytes_sent(
    origin: Origin, tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """What is billed is what the access log and the site's bytes say: an answer cut short is in both, with the
    bytes sent (a video player abandons large answers all the time). The fast path left out the answers of more
    slices than it holds before the head, from both."""
    big = bytes(range(256)) * 4096 * 8  # 8 MiB, 32 slices of 256 KiB: more than the 4 MiB a socket buffers at most
    origin.put("/big", big)
    site = f"left-{fast}"
    config = replace(
        make_config(tmp_path / "cache", [origin.url], slice_bytes=2**18),
        sites=(Site(name=site, hosts=("a.test",), origins=(origin.url,)),),
        fast_path=fast,
        access_log=tmp_path / "access.log",
    )
    async with start_edge(config) as edge:
        assert await fetch(edge.port, "a.test", "/big") == (200, big)  # a miss, read whole
        for _ in range(2):
            await leave_after_head(edge.port, "/big")  # hits
        await leave_after_head(edge.port, "/big", "bytes=0-9,10-")  # multipart/byteranges
        assert await fetch(edge.port, "a.test", "/big") == (200, big)
    lines = [(r["status"], r["bytes"]) for r in records(tmp_path / "access.log")]
    assert [status for status, _ in lines] == [200, 0, 0, 0, 200]
    assert lines[0][1] == lines[4][1] == len(big)
    assert all(0 <= sent < len(big) for _, sent in lines[1:4]), lines
    served = sum(sample("edgecache_site_served_bytes_total", site=site, upstream=u) for u in ("origin", "cache"))
    assert served == sum(sent for _, sent in lines)
    assert origin.hits["/big"] == 1
    # A viewer that leaves is no error of the node's: aiohttp logged one, with a traceback, for each.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_prefetch_requests_are_counted_apart_from_viewers_requests(origin: Origin, tmp_path: Path) -> None:
    """A prefetch job's requests were counted in edgecache_requests_total (and its misses in edgecache_misses_total)
    as a viewer's: a request hit ratio from them took the node's own fetches as viewers' misses. They are counted in
    edgecache_prefetch_requests_total{site,status_class,cache_status} instead."""
    site = Site(name="count-prefetch", hosts=("cp.test",), origins=(origin.url,))
    origin.put("/pf", X)
    async with admin_node(node_config(origin, tmp_path / "cache", site)) as node:
        status, job = await node.call("POST", "/prefetch", json={"urls": ["http://cp.test/pf"]})
        assert status == 202, job
        assert isinstance(job, dict)
        assert (await node.finished(str(job["id"])))["fetched"] == 1
        assert await fetch(node.edge.port, "cp.test", "/pf") == (200, X)  # a viewer's hit
    assert origin.hits["/pf"] == 1

    def requests(cache_status: str) -> float:
        return sample(
            "edgecache_requests_total", site=site.name, method="GET", status_class="2xx", cache_status=cache_status
        )

    assert (requests("hit"), requests("miss")) == (1, 0)
    assert sample("edgecache_misses_total", site=site.name, cause="cold") == 0
    prefetched = sample("edgecache_prefetch_requests_total", site=site.name, status_class="2xx", cache_status="miss")
    assert prefetched == 1
