"""Origin selection: failover across a site's origins, per-site cache policy."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from edgecache.core.freshness import Policy
from tests.conftest import make_config, start_edge
from tests.origin import Origin


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_failover_on_connection_error_and_5xx(origin: Origin, tmp_path: Path) -> None:
    broken = Origin()
    await broken.start()
    broken.on_request = lambda request, obj: web.Response(status=503, text="overloaded")
    origin.put("/f", b"from the healthy origin")
    cfg = make_config(tmp_path / "c", [f"http://127.0.0.1:{closed_port()}", broken.url, origin.url])
    try:
        async with start_edge(cfg) as edge:
            status, _, body = await edge.get("/f")
            assert (status, body) == (200, b"from the healthy origin")
            assert broken.hits["/f"] == 1
            assert origin.hits["/f"] == 1
    finally:
        await broken.stop()


@pytest.mark.parametrize("fast", [True, False])
async def test_all_origins_down_is_a_quick_502(tmp_path: Path, fast: bool) -> None:
    """The answer names the site, never an origin's address (internal: a viewer must not learn it); the log does."""
    cfg = make_config(tmp_path / "c", [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"])
    async with start_edge(replace(cfg, fast_path=fast)) as edge:
        for _ in range(2):
            status, headers, body = await edge.get("/x")
            assert (status, body) == (502, b"origin failed: site videos: could not connect\n")
            assert headers["Cache-Status"] == 'edgecache; detail="origin failed: site videos: could not connect"'


async def test_site_policy_min_ttl_and_set_cookie(origin: Origin, tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "c", [origin.url])
    policy = Policy(min_ttl=300, store_set_cookie=True)
    cfg = replace(cfg, sites=(replace(cfg.sites[0], policy=policy),))
    origin.put("/short", b"s", headers={"Cache-Control": "max-age=0"})
    origin.put("/cookie", b"c", headers={"Cache-Control": "max-age=60", "Set-Cookie": "a=b"})
    async with start_edge(cfg) as edge:
        for path in ("/short", "/cookie"):
            await edge.get(path)
            assert (await edge.get(path))[1]["Cache-Status"] == "edgecache; hit", path
        assert origin.hits["/short"] == 1
        assert origin.hits["/cookie"] == 1


async def test_set_cookie_responses_are_not_stored_by_default(origin: Origin, tmp_path: Path) -> None:
    origin.put("/cookie", b"c", headers={"Cache-Control": "max-age=60", "Set-Cookie": "session=secret"})
    async with start_edge(make_config(tmp_path / "c", [origin.url])) as edge:
        for _ in range(2):
            status, headers, _ = await edge.get("/cookie")
            assert status == 200
            assert headers["Set-Cookie"] == "session=secret"  # forwarded to its own client, never stored
            assert 'detail="set-cookie"' in headers["Cache-Status"]
        assert origin.hits["/cookie"] == 2


async def test_client_subnet_acl(origin: Origin, tmp_path: Path) -> None:
    from ipaddress import ip_network

    origin.put("/acl", b"a")
    cfg = make_config(tmp_path / "c", [origin.url])
    for allow, status in (((ip_network("10.0.0.0/8"),), 403), ((ip_network("127.0.0.0/8"),), 200)):
        site = replace(cfg.sites[0], allow=allow)
        async with start_edge(replace(cfg, sites=(site,))) as edge:
            got, _, body = await edge.get("/acl")
            assert got == status
            if status == 403:
                assert body == b"this address may not use site 'videos'\n"
    assert origin.hits["/acl"] == 1  # the refused client never caused an origin request
