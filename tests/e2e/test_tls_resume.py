"""TLS session resumption on a listener with a certificate per site: a session is only ever resumed for the
certificate it was made with."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from edgecache.config import Listen, Site
from tests.conftest import make_config, start_edge
from tests.e2e.test_tls import BODY, issue, trusting
from tests.origin import Origin


async def get(
    port: int, ctx: ssl.SSLContext, name: str, session: ssl.SSLSession | None = None
) -> tuple[bytes, bool, ssl.SSLSession]:
    """GET /v.bin with SNI and Host `name`, resuming `session` if given: the answer, whether the session was
    resumed, and the session (with its TLS 1.3 ticket, which comes after the handshake) to resume later."""
    loop = asyncio.get_running_loop()
    sock, incoming, outgoing = socket.socket(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name, session=session)
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
            tls.write(f"GET /v.bin HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            await loop.sock_sendall(sock, outgoing.read())
            while data := await loop.sock_recv(sock, 2**16):  # to the node's close_notify (Connection: close)
                incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    while chunk := tls.read(2**16):
                        got += chunk
                    break
    finally:
        sock.close()
    assert tls.session is not None
    return bytes(got), tls.session_reused, tls.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["1.3", "1.2"])
async def test_a_session_is_not_resumed_for_another_certificates_name(
    origin: Origin, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """Every certificate's handshake is switched from the listeners' context, whose ticket keys OpenSSL encrypts
    every session ticket with: a TLS 1.3 session made with other.test's certificate was resumed under the SNI name
    video.test, and the request for video.test served (200), its client never shown a certificate for video.test
    (RFC 8446 4.6.1: a ticket is for the server identity it was made with); the 421 that stops a Host of another
    certificate judged the new name. OpenSSL reads the ticket before the SNI callback can choose a context, so with
    several certificates no TLS 1.3 ticket is issued now: such a client gets a full handshake with video.test's
    certificate. TLS 1.2 resumes a session with the name it was made for, which the 421 judges, as before; with
    one certificate TLS 1.3 sessions are resumed as before."""
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    videos = issue(ca, tmp_path, "videos", "video.test", "*.cdn.test")
    other = issue(ca, tmp_path, "other", "other.test")
    config = make_config(tmp_path / "c", [origin.url])
    sites = (
        replace(config.sites[0], tls=videos),
        Site(name="other", hosts=("other.test",), origins=(origin.url,), tls=other),
    )
    config = replace(config, sites=sites, tls_listen=(Listen("127.0.0.1", 0),))
    ctx = trusting(ca)
    ctx.minimum_version = ctx.maximum_version = version
    tls12 = version is ssl.TLSVersion.TLSv1_2
    async with start_edge(config) as edge:
        port = edge.ports[1]
        answer, reused, other_session = await get(port, ctx, "other.test")
        assert (answer.endswith(BODY), reused) == (True, False)
        for _ in range(2):
            answer, reused, _ = await get(port, ctx, "video.test", other_session)
            status = b"HTTP/1.1 421 Misdirected Request" if tls12 else b"HTTP/1.1 200 OK"
            assert (answer.split(b"\r\n")[0], reused) == (status, tls12)
        _, _, videos_session = await get(port, ctx, "a.cdn.test")
        answer, reused, _ = await get(port, ctx, "video.test", videos_session)
        assert (answer.split(b"\r\n")[0], reused) == (b"HTTP/1.1 200 OK", tls12)
    async with start_edge(replace(config, sites=sites[:1])) as edge:  # one certificate: resumed
        _, _, videos_session = await get(edge.ports[1], ctx, "video.test")
        answer, reused, _ = await get(edge.ports[1], ctx, "a.cdn.test", videos_session)
        assert (answer.endswith(BODY), reused) == (True, True)
    assert origin.hits["/v.bin"] == 3  # other.test, a.cdn.test, video.test; the second node has the same disk
