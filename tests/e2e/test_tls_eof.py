"""HTTPS clients that end their TCP connection under an answer, on the node's own loop (uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from pathlib import Path

import trustme

from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_tls import fetch, issue, trusting
from tests.origin import Origin


async def request_then_fin(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    """Send `request` over TLS and a TCP FIN in one segment (no close_notify); what the node sends back."""
    loop = asyncio.get_running_loop()
    sock, incoming, outgoing = socket.socket(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="video.test")
    sock.setblocking(False)
    got = bytearray()
    try:
        async with asyncio.timeout(10):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await loop.sock_sendall(sock, outgoing.read())
                    incoming.write(await loop.sock_recv(sock, 2**16))
            tls.write(request)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)  # the request and the FIN go together
            await loop.sock_sendall(sock, outgoing.read())
            sock.shutdown(socket.SHUT_WR)
            while data := await loop.sock_recv(sock, 2**16):
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    while chunk := tls.read(2**16):
                        got += chunk
    finally:
        sock.close()
    return bytes(got)


async def test_a_tls_client_that_sends_fin_costs_no_warning_per_piece(origin: Origin, tmp_path: Path) -> None:
    """uvloop's TLS transport takes a TCP FIN as a lost connection: it drops every write from then on, logging the
    WARNING 'SSL connection is closed' for each past the fifth, while the transport still says it is open until
    connection_lost comes. A hit read under TLS a piece (64 KiB) at a time was written whole into it: a client that
    sent a request and a FIN (16 bytes) had the node read 8 MiB for nobody and log 123 lines, 1,020 for 64 MiB, as
    often as it liked. The node yields to its loop between the pieces now, and stops at connection_lost."""
    body = os.urandom(8 * 2**20)
    origin.put("/v.bin", body)
    ca = trustme.CA()
    issue(ca, tmp_path, "videos", "video.test")
    plain, https = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{plain}"]\ntls_listen = ["127.0.0.1:{https}"]\n[cache]\ndir = "c"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
        '[sites.tls]\ncert = "videos.pem"\nkey = "videos.key"\n'
    )
    ctx = trusting(ca)
    request = b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\n\r\n"
    async with edge_process("serve", "--config", str(config), ready={b"listening on https": 1}) as proc:
        assert (await fetch(https, ca, "video.test", "video.test", "/v.bin")).endswith(body)  # a hit from now on
        for _ in range(3):
            assert await request_then_fin(https, ctx, request) == b""  # uvloop's TLS ends there, answered or not
        assert (await fetch(https, ca, "video.test", "video.test", "/v.bin")).endswith(body)
    assert proc.stderr is not None
    log = await proc.stderr.read()
    assert log.count(b"SSL connection is closed") == 0  # 372 before
    assert b"Traceback" not in log
    assert origin.hits["/v.bin"] == 1
