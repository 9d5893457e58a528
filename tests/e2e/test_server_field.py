"""The Server field: the origin's when it sent one, else `server.server_field` ("edgecache" by default, "" none), on
every answer of a node whichever path writes it (proxy.serverfield): a miss, a hit, a 304, a HEAD, a range, a pass,
the node's own error, through a second node of a cluster, and the admin listener's answers. aiohttp's server, and
the fast path after it, added `Server: Python/3.11 aiohttp/3.14.5` to each: the interpreter's and aiohttp's versions,
which security scanners report as a version disclosure."""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from edgecache.config import Config, Listen
from edgecache.server import _start_admin
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.procs import free_port
from tests.e2e.test_cache_status import settled
from tests.e2e.test_cluster import cluster_configs, owner_of, started
from tests.e2e.test_fast_path import get, normalised
from tests.origin import RawOrigin, RawReply, RawRequest
from tests.wire import exchange

BODY = b"0123456789"
CLOSE = "Connection: close"
ORIGINS = "OriginSoft/1.0 (by the provider)"


def reply(request: RawRequest) -> RawReply:
    own = f"Server: {ORIGINS}\r\n".encode() if request.path.startswith("/own") else b""
    head = b'HTTP/1.1 200 OK\r\nETag: "s1"\r\nCache-Control: max-age=600\r\n' + own
    return head + b"Content-Length: %d\r\n\r\n" % len(BODY) + (b"" if request.method == "HEAD" else BODY), False


ASKED = [
    get("/a", CLOSE),  # a miss
    get("/a", CLOSE),  # a hit
    get("/a", 'If-None-Match: "s1"', CLOSE),  # a 304
    get("/a", CLOSE, method="HEAD"),
    get("/a", "Range: bytes=2-5", CLOSE),
    get("/p", "Cache-Control: no-store", CLOSE),  # passed through
    get("/a", CLOSE, host="nope.test"),  # the node's own error: 421
    b"GET /a HTTP/1.1\r\nHost: video.test\r\nBad Field\r\n\r\n",  # a head the parser refuses: 400
    get("/own", CLOSE),  # the origin's Server, on a miss and a hit
    get("/own", CLOSE),
]


def servers(answer: bytes) -> list[bytes]:
    return re.findall(rb"\r\nServer: ([^\r]*)\r\n", answer.partition(b"\r\n\r\n")[0] + b"\r\n")


def node(tmp_path: Path, origin: RawOrigin, fast: bool, field: str | None) -> Config:
    config = replace(make_config(tmp_path, [origin.url]), fast_path=fast)
    return config if field is None else replace(config, server_field=field)


@pytest.mark.parametrize(
    ("field", "added"), [(None, [b"edgecache"]), ("MyCDN/2.0 edge", [b"MyCDN/2.0 edge"]), ("", [])]
)
async def test_the_server_field_is_the_origins_or_the_configured_one_on_both_paths(
    tmp_path: Path, field: str | None, added: list[bytes]
) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        async with (
            start_edge(node(tmp_path / "fast", origin, True, field)) as fast,
            start_edge(node(tmp_path / "framework", origin, False, field)) as framework,
        ):
            for request in ASKED:
                ours, theirs = await exchange(fast.port, request), await exchange(framework.port, request)
                await settled(fast, framework)
                assert await normalised(ours) == await normalised(theirs), request
                wanted = [ORIGINS.encode()] if b" /own " in request else added
                assert servers(ours) == wanted, ours
            miss = await exchange(fast.port, get("/m", CLOSE))
        assert origin.hits == {"/a": 2, "/p": 2, "/own": 2, "/m": 1}
    finally:
        await origin.stop()
    server = b"".join(b"Server: %s\r\n" % value for value in added)
    assert await normalised(miss) == (
        b'HTTP/1.1 200 OK\r\nETag: "s1"\r\nCache-Control: max-age=600\r\nVia: 1.1 edgecache\r\nAge: -\r\n'
        b"Cache-Status: edgecache; fwd=uri-miss; stored\r\nAccept-Ranges: bytes\r\nContent-Length: 10\r\nDate: -\r\n"
        + server
        + b"Connection: close\r\n\r\n"
        + BODY
    )


@pytest.mark.parametrize("fast", [True, False])
async def test_a_relayed_answer_carries_the_field_once(tmp_path: Path, fast: bool) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        for field, added in (("MyCDN/2.0", [b"MyCDN/2.0"]), ("", [])):
            configs = cluster_configs(origin, tmp_path / (field or "none"))  # type: ignore[arg-type]
            configs = [replace(c, fast_path=fast, server_field=field) for c in configs]
            path = next(p for p in (f"/c/{field}/{i}" for i in range(100)) if owner_of(configs, p) == "node2")
            own = next(p for p in (f"/own/{field}/{i}" for i in range(100)) if owner_of(configs, p) == "node2")
            async with started(configs) as nodes:
                for _ in range(2):  # the owner's miss, then its hit, through node1
                    answer = await exchange(nodes[0].port, get(path, CLOSE))
                    assert answer.endswith(b"\r\n\r\n" + BODY), answer
                    assert servers(answer) == added, answer
                    answer = await exchange(nodes[0].port, get(own, CLOSE))
                    assert servers(answer) == [ORIGINS.encode()], answer
            assert (origin.hits[path], origin.hits[own]) == (1, 1)
    finally:
        await origin.stop()


async def admin_answers(edge: Edge) -> list[bytes]:
    """The admin listener's answers (server._start_admin's own) to a health check, a call without a token, and a
    head its parser refuses."""
    admin = Listen("127.0.0.1", free_port())
    edge.node.config = replace(edge.node.config, admin=admin)
    with tempfile.TemporaryDirectory(prefix="edgecache-") as private:
        runner = await _start_admin(edge.node, edge.runner, Path(private))
        assert runner is not None
        try:
            return [
                await exchange(admin.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
                await exchange(admin.port, b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
                await exchange(admin.port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Field\r\n\r\n"),
            ]
        finally:
            await runner.cleanup()


@pytest.mark.parametrize(("field", "added"), [(None, [b"edgecache"]), ("MyCDN", [b"MyCDN"]), ("", [])])
async def test_the_admin_listener_follows_the_key(tmp_path: Path, field: str | None, added: list[bytes]) -> None:
    origin = RawOrigin(reply)
    await origin.start()
    try:
        async with start_edge(node(tmp_path, origin, True, field)) as edge:
            answers = await admin_answers(edge)
    finally:
        await origin.stop()
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 401 Unauthorized",
        b"HTTP/1.0 400 Bad Request",
    ]
    assert [servers(a) for a in answers] == [added] * 3, answers
