"""How long the node holds a TLS connection it closed: its close_notify sent, it waits for the client's, and a
client that never sends one held the connection (and its place under max_connections) for uvloop's and asyncio's
default ssl_shutdown_timeout, 30 s."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import replace
from pathlib import Path

import trustme

from edgecache.config import Listen
from edgecache.proxy import tlsdoor
from tests.conftest import make_config, start_edge
from tests.e2e.test_tls import issue, trusting
from tests.origin import Origin


def _asked_and_kept(port: int, ca: trustme.CA) -> tuple[ssl.SSLSocket, bytes]:
    """A request with Connection: close, its answer read to the node's close_notify, and the connection left open
    without one of the client's (a client that closes neither its TLS nor its TCP)."""
    ctx = trusting(ca)
    tls = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="video.test")
    tls.sendall(b"GET /a HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := tls.recv(65536):  # b"": the node's close_notify
        answer += chunk
    return tls, answer


async def test_a_tls_connection_the_node_closed_is_let_go_soon_without_the_clients_close_notify(
    origin: Origin, tmp_path: Path
) -> None:
    origin.put("/a", b"a")
    config = make_config(tmp_path / "c", [origin.url])
    ca = trustme.CA()
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    async with start_edge(replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),))) as edge:
        fast = edge.fast
        assert fast is not None
        tls, answer = await asyncio.to_thread(_asked_and_kept, edge.ports[1], ca)
        try:
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert answer.endswith(b"\r\n\r\na")
            loop = asyncio.get_running_loop()
            began = loop.time()
            async with asyncio.timeout(tlsdoor.SHUTDOWN_SECONDS + 5):  # 30 s before
                while fast.open:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert loop.time() - began < tlsdoor.SHUTDOWN_SECONDS + 1
        finally:
            tls.close()
    assert origin.hits["/a"] == 1
