"""HTTPS with a certificate per site, chosen by SNI; the same bytes and the same fast path as plain HTTP."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from edgecache.config import Listen, Site, TLSFiles
from edgecache.errors import ConfigError
from tests.conftest import make_config, start_edge
from tests.origin import Origin
from tests.samples import sample_value
from tests.wire import fast_path_outcomes

BODY = b"served over TLS " * 500


def issue(
    ca: trustme.CA, tmp: Path, name: str, *hosts: str, key_type: trustme.KeyType = trustme.KeyType.ECDSA
) -> TLSFiles:
    cert = ca.issue_cert(*hosts, key_type=key_type)
    files = TLSFiles(tmp / f"{name}.pem", tmp / f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(files.cert), append=True)
    cert.private_key_pem.write_to_path(str(files.key))
    return files


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA alone (hostname checked, certificate required). Not
    ssl.create_default_context(): that parses the system's CA bundle, 50-100 ms on the loop of a loaded machine,
    for certificates no test trusts."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


async def fetch(port: int, ca: trustme.CA, server_name: str, host: str, path: str) -> bytes:
    ctx = trusting(ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


def answered() -> float:
    return sample_value("edgecache_fast_path_total", {"outcome": "answered"}) or 0.0


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_each_site_gets_its_own_certificate_by_sni(origin: Origin, tmp_path: Path, fast: bool) -> None:
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    videos = issue(ca, tmp_path, "videos", "video.test", "*.cdn.test")
    other = issue(ca, tmp_path, "other", "other.test")
    config = make_config(tmp_path / "c", [origin.url])
    sites = (
        replace(config.sites[0], tls=videos),
        Site(name="other", hosts=("other.test",), origins=(origin.url,), tls=other),
    )
    config = replace(config, sites=sites, tls_listen=(Listen("127.0.0.1", 0),), fast_path=fast)
    async with start_edge(config) as edge:
        port = edge.ports[1]
        for name, host in (("video.test", "video.test"), ("a.cdn.test", "a.cdn.test"), ("other.test", "other.test")):
            before = answered()
            for _ in range(2):  # a miss, then a hit
                raw = await fetch(port, ca, name, host, "/v.bin")
                head, _, body = raw.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert body == BODY
            assert answered() - before == (2 if fast else 0)  # the miss too
        # A name no site has a certificate for gets the default one, which a careful client refuses.
        with pytest.raises(ssl.SSLCertVerificationError):
            await fetch(port, ca, "unknown.test", "video.test", "/v.bin")
        # The plain listener still works, and the HTTPS one never serves plain HTTP (test_tls_mismatch: a 400).
        assert (await edge.get("/v.bin"))[2] == BODY
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
        async with asyncio.timeout(10):
            assert (await reader.read(-1)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        writer.close()
    assert origin.hits["/v.bin"] == 3  # once per host: the key includes the host


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_host_the_sni_certificate_does_not_cover_is_misdirected(
    origin: Origin, tmp_path: Path, fast: bool
) -> None:
    """Domain fronting: a client that sent SNI other.test (and checked other.test's certificate) and then Host
    video.test was served video.test's objects. Such a request is answered 421 Misdirected Request (RFC 9110
    15.5.20), as nginx and CloudFront answer it, and the connection closed; the origin is never asked. A host of
    the same certificate is served on that connection, and a client that sent no name is served as before."""
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    videos = issue(ca, tmp_path, "videos", "video.test", "*.cdn.test")
    other = issue(ca, tmp_path, "other", "other.test")
    config = make_config(tmp_path / "c", [origin.url])
    sites = (
        replace(config.sites[0], tls=videos),
        Site(name="other", hosts=("other.test",), origins=(origin.url,), tls=other),
    )
    config = replace(config, sites=sites, tls_listen=(Listen("127.0.0.1", 0),), fast_path=fast)
    reason = b"misdirected request: the TLS server name (SNI) names another certificate than this host's\n"
    async with start_edge(config) as edge:
        port = edge.ports[1]
        handed = fast_path_outcomes()["handed_off"]
        for name, host in (("other.test", "video.test"), ("video.test", "other.test"), ("a.cdn.test", "other.test")):
            for _ in range(2):
                head, _, body = (await fetch(port, ca, name, host, "/v.bin")).partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                assert (lines[0], body) == (b"HTTP/1.1 421 Misdirected Request", reason), (name, host)
                assert b"Connection: close" in lines, (name, host)
        assert origin.hits["/v.bin"] == 0
        assert fast_path_outcomes()["handed_off"] == handed  # refused on the fast path (route.fronted)
        for name, host in (("video.test", "video.test"), ("a.cdn.test", "video.test"), ("video.test", "a.cdn.test")):
            for _ in range(2):
                head, _, body = (await fetch(port, ca, name, host, "/v.bin")).partition(b"\r\n\r\n")
                assert (head.split(b"\r\n")[0], body) == (b"HTTP/1.1 200 OK", BODY), (name, host)
        ctx = trusting(ca)
        ctx.check_hostname = False
        for host in ("video.test", "other.test"):  # no SNI: any host, as before
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
            try:
                writer.write(f"GET /v.bin HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                async with asyncio.timeout(10):
                    head, _, body = (await reader.read(-1)).partition(b"\r\n\r\n")
            finally:
                writer.close()
            assert (head.split(b"\r\n")[0], body) == (b"HTTP/1.1 200 OK", BODY), host
    assert origin.hits["/v.bin"] == 3  # video.test, a.cdn.test, other.test: once each


def test_a_certificate_that_cannot_be_loaded_is_a_config_error(tmp_path: Path) -> None:
    from edgecache.config import build

    (tmp_path / "bad.pem").write_text("not a certificate")
    doc = {
        "server": {"tls_listen": ["127.0.0.1:8443"]},
        "sites": [
            {
                "name": "v",
                "hosts": ["video.test"],
                "origins": ["http://127.0.0.1:1"],
                "tls": {"cert": "bad.pem", "key": "missing.key"},
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        build(doc, "edge.toml", tmp_path)
    problems = "\n".join(info.value.problems)
    assert f"edge.toml: sites[0].tls.key: cannot read {str(tmp_path / 'missing.key')!r}: No such file or directory" in (
        problems
    )
    assert "edge.toml: server.tls_listen: needs a certificate" in problems
    # Both files there: the pair, with OpenSSL's reason.
    doc["sites"][0]["tls"]["key"] = "bad.pem"
    with pytest.raises(ConfigError) as info:
        build(doc, "edge.toml", tmp_path)
    problems = "\n".join(info.value.problems)
    assert f"edge.toml: sites[0].tls: cannot load certificate {tmp_path / 'bad.pem'} with key" in problems
    doc["sites"][0]["tls"] = {"cert": "gone.pem", "key": "bad.pem"}
    with pytest.raises(ConfigError) as info:
        build(doc, "edge.toml", tmp_path)
    assert f"edge.toml: sites[0].tls.cert: cannot read {str(tmp_path / 'gone.pem')!r}: No such file or directory" in (
        info.value.problems
    )


async def test_clients_that_stop_reading_hold_a_piece_each_not_their_answer(origin: Origin, tmp_path: Path) -> None:
    """Under TLS each write is encrypted into a buffer of the connection's own (over plain HTTP the transport keeps
    a reference to the memory tier's bytes): an answer written whole held its size per client that stopped reading,
    2.3 MB each measured, so 20,000 such clients would take 46 GB. It is written a piece at a time now."""
    import os
    import socket
    import tracemalloc

    clients, body = 4, os.urandom(8 * 2**20)  # eight slices: an answer the fast path used to write at once
    origin.put("/stall.bin", body)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),))
    ctx = trusting(ca)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        assert (await edge.get("/stall.bin"))[2] == body  # in memory now
        writers = []
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(clients):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", edge.ports[1]))
                _, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="video.test", limit=4096)
                writer.write(b"GET /stall.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
                writers.append(writer)
            # Every answer has filled what its client and the kernel take, and waits. (Written whole, an answer
            # was encrypted into the socket's buffer in one go: the connection was never paused at all.)
            async with asyncio.timeout(20):
                while sum(c.write_paused for c in edge.fast.connections) < clients:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            for writer in writers:
                writer.close()
    assert held < clients * 2**20, held


async def served(port: int, ctx: ssl.SSLContext) -> bytes:
    """The certificate (DER) a client without SNI is given."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        writer.close()


async def test_a_reload_replaces_the_default_certificate_of_another_key_type(origin: Origin, tmp_path: Path) -> None:
    """The listener's context loaded each reload's default certificate in place: OpenSSL keeps one certificate per
    key type, so a renewed ECDSA certificate was served beside the RSA one it replaced, which clients that prefer
    RSA went on getting (expired, or its key revoked) until a restart."""
    from edgecache.config import load
    from edgecache.server import reload

    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    # Off the loop: an RSA key takes 130-170 ms to make (OpenSSL lets the GIL go meanwhile).
    old = await asyncio.to_thread(issue, ca, tmp_path, "old", "video.test", key_type=trustme.KeyType.RSA)
    new = issue(ca, tmp_path, "new", "video.test", key_type=trustme.KeyType.ECDSA)
    path = tmp_path / "edge.toml"
    doc = '[server]\ntls_listen = ["127.0.0.1:8443"]\n[server.tls]\ncert = "{0}.pem"\nkey = "{0}.key"\n'
    doc += '[cache]\ndir = "c"\n'
    site = f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
    path.write_text(doc.format("old") + site)
    rsa, ecdsa = trusting(ca), trusting(ca)
    for ctx in (rsa, ecdsa):
        ctx.check_hostname = False
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the cipher suite names the certificate's key type
    rsa.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    ecdsa.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    listen = make_config(tmp_path, []).listen
    async with start_edge(replace(load(path), listen=listen, tls_listen=listen)) as edge:
        port = edge.ports[1]
        assert await served(port, rsa) == ssl.PEM_cert_to_DER_cert(old.cert.read_text())
        path.write_text(doc.format("new") + site)
        assert await reload(edge.node)
        assert await served(port, ecdsa) == ssl.PEM_cert_to_DER_cert(new.cert.read_text())
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # the node holds no RSA certificate any more
            await served(port, rsa)
        assert (await fetch(port, ca, "video.test", "video.test", "/v.bin")).endswith(BODY)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "framework"])
async def test_a_client_that_closes_cleanly_logs_no_warning(
    origin: Origin, tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Every HTTPS client that ended its connection with a close_notify (curl, browsers) logged the WARNING "returning
    true from eof_received() has no effect when using ssl": a line per connection, at any rate a client likes. Our
    protocols keep a half-closed connection open on plain HTTP only; the SSL transport closes it anyway."""
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),), fast_path=fast)
    ctx = trusting(ca)
    async with start_edge(config) as edge:
        for _ in range(2):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", edge.ports[1], ssl=ctx, server_hostname="video.test"
            )
            writer.write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert await reader.readexactly(len(BODY)) == BODY
                writer.close()  # a close_notify; closed once the node's own (sent after its eof_received) is in
                await writer.wait_closed()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "asyncio"] == []
    assert origin.hits["/v.bin"] == 1


async def test_handshakes_count_against_max_connections_and_end_at_the_header_timeout(
    origin: Origin, tmp_path: Path
) -> None:
    """A connection in its TLS handshake was nobody's: asyncio calls the protocol only once the handshake is done,
    and gives it 60 s. Connections that sent nothing held a file descriptor each, uncounted by max_connections:
    250 of them took a worker with 200 descriptors past its limit, every client got no answer at all, and the disk
    tier's probe failed (the disk was taken out of service). They count from the accept now, as plain ones do,
    and have header_timeout to end the handshake, as a plain request head does."""
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),), max_connections=3)
    config = replace(config, header_timeout=0.5)
    async with start_edge(config) as edge:
        stalled = [await asyncio.open_connection("127.0.0.1", edge.ports[1]) for _ in range(3)]
        plain = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            async with asyncio.timeout(10):
                # The listeners are full: a plain client gets the 503, a TLS one is closed before its handshake.
                plain[1].write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
                assert (await plain[0].read()).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    await fetch(edge.ports[1], ca, "video.test", "video.test", "/v.bin")
                for reader, _ in stalled:  # closed at the header timeout, without a byte
                    assert await reader.read() == b""
        finally:
            for _, writer in [*stalled, plain]:
                writer.close()
        assert (await fetch(edge.ports[1], ca, "video.test", "video.test", "/v.bin")).endswith(BODY)
    assert origin.hits["/v.bin"] == 1


def test_a_certificate_clients_refuse_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An expired certificate, or one naming none of a host its site serves, loaded without a word: check-config
    said "ok", and every HTTPS client of the site was refused. Both are warned of now, naming the file, the key and
    the problem (warnings: a node whose certificate lapsed still starts and serves its other sites)."""
    import datetime

    from edgecache.config import build

    ca = trustme.CA()
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    lapsed = ca.issue_cert("video.test", not_before=past - datetime.timedelta(days=90), not_after=past)
    lapsed.cert_chain_pems[0].write_to_path(str(tmp_path / "lapsed.pem"))
    lapsed.private_key_pem.write_to_path(str(tmp_path / "lapsed.key"))
    issue(ca, tmp_path, "videos", "video.test", "*.cdn.test", "192.0.2.1")
    issue(ca, tmp_path, "other", "other.test")

    def site(name: str, hosts: list[str], pair: str) -> dict[str, object]:
        tls = {"cert": f"{pair}.pem", "key": f"{pair}.key"}
        return {"name": name, "hosts": hosts, "origins": ["http://127.0.0.1:1"], "tls": tls}

    sites = [
        site("v", ["video.test", "a.cdn.test", "*.cdn.test", "192.0.2.1"], "videos"),  # all named
        site("o", ["other.test", "www.other.test", "*.other.test"], "other"),
        site("l", ["lapsed.test"], "lapsed"),
    ]
    doc = {"server": {"tls_listen": ["127.0.0.1:8443"]}, "sites": sites}
    with caplog.at_level(logging.WARNING, "edgecache.config"):
        config = build(doc, "edge.toml", tmp_path)
    assert [s.tls is not None for s in config.sites] == [True, True, True]
    assert [r.getMessage() for r in caplog.records] == [
        f"edge.toml: sites[1].tls: certificate {tmp_path / 'other.pem'} does not name host {h!r} (subjectAltName):"
        " HTTPS clients asking for it refuse it"
        for h in ("www.other.test", "*.other.test")
    ] + [f"edge.toml: sites[2].tls: certificate {tmp_path / 'lapsed.pem'} has expired: clients refuse it"]


def client_hello(name: bytes) -> bytes:
    """A TLS 1.2 ClientHello naming `name` as it stands (Python's client would send it IDNA-encoded)."""
    import os
    import struct

    sni = struct.pack("!BH", 0, len(name)) + name
    exts = struct.pack("!HHH", 0, len(sni) + 2, len(sni)) + sni
    exts += struct.pack("!HHHHH", 10, 6, 4, 0x001D, 0x0017)  # groups: x25519, secp256r1
    exts += struct.pack("!HHHHH", 13, 6, 4, 0x0403, 0x0804)  # signature algorithms
    ciphers = struct.pack("!HHH", 4, 0xC02B, 0xC02F)
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + ciphers + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


async def test_a_name_that_is_not_ascii_costs_no_traceback(origin: Origin, tmp_path: Path) -> None:
    """CPython decodes the client's SNI name as ASCII before our callback sees it, and sends a name it cannot
    decode to sys.unraisablehook: five lines of traceback on a node's stderr for each such handshake, which any
    client can send as often as it likes. The handshake still fails; the node logs one line at INFO."""
    from tests.e2e.procs import edge_process, free_port

    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    issue(ca, tmp_path, "videos", "video.test")
    plain, https = free_port(), free_port()
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{plain}"]\ntls_listen = ["127.0.0.1:{https}"]\n[cache]\ndir = "c"\n'
        f'[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["{origin.url}"]\n'
        '[sites.tls]\ncert = "videos.pem"\nkey = "videos.key"\n'
    )
    async with edge_process("serve", "--config", str(config), ready={b"listening on https": 1}) as proc:
        for name in ("café.test".encode(), b"\xff\xfe.test"):
            reader, writer = await asyncio.open_connection("127.0.0.1", https)
            writer.write(client_hello(name))
            async with asyncio.timeout(10):
                assert not (await reader.read()).startswith(b"\x16")  # no ServerHello: refused
            writer.close()
        assert (await fetch(https, ca, "video.test", "video.test", "/v.bin")).endswith(BODY)
    assert proc.stderr is not None
    log = await proc.stderr.read()
    assert b"Traceback" not in log
    assert log.count(b"INFO edgecache.tls: TLS handshake refused: the client's SNI name is not ASCII") == 2


async def test_a_key_with_a_passphrase_is_refused_without_asking_for_it(tmp_path: Path) -> None:
    """OpenSSL asks for the passphrase of an encrypted key on the terminal (or stdin) when given no way to get it:
    check-config, a start and a reload (on the worker's loop) waited there for ever at 'Enter PEM pass phrase:', and
    with stdin closed failed with '[Errno 22] Invalid argument'. Such a key is a config error now, saying so."""
    import sys

    from cryptography.hazmat.primitives import serialization

    from tests.e2e.procs import ROOT

    files = issue(trustme.CA(), tmp_path, "videos", "video.test")
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    secret = serialization.BestAvailableEncryption(b"secret")
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, secret))
    config = tmp_path / "edge.toml"
    config.write_text(
        '[server]\nlisten = ["127.0.0.1:8080"]\ntls_listen = ["127.0.0.1:8443"]\n[cache]\ndir = "c"\n'
        '[[sites]]\nname = "videos"\nhosts = ["video.test"]\norigins = ["http://127.0.0.1:1"]\n'
        '[sites.tls]\ncert = "videos.pem"\nkey = "videos.key"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecache", "check-config", str(config), cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):  # stdin stays open: a prompt would wait on it
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2
    assert out.decode() == (
        f"{config}: sites[0].tls: cannot load certificate {files.cert} with key {files.key}: the private key is"
        " encrypted: edgecache takes a key without a passphrase\n"
        f"{config}: server.tls_listen: needs a certificate: [server.tls] or a [sites.tls] table\n"
    )


async def test_a_client_that_stops_reading_holds_about_a_piece_of_encrypted_bytes(
    origin: Origin, tmp_path: Path
) -> None:
    """The TLS transport encrypts what it is given into a buffer of its own and tells the writer to wait only past
    512 KiB (asyncio's and uvloop's default for TLS): a client that stopped reading held 524,992 bytes of the node's
    memory (outside Python's heap, where tracemalloc does not see it), not the 64 KiB piece the answers are written
    in. An HTTPS connection's transport asks the writer to wait past a piece now."""
    import os
    import socket

    from edgecache.proxy.diskhit import TLS_PIECE

    clients, body = 4, os.urandom(8 * 2**20)
    origin.put("/stall.bin", body)
    ca = trustme.CA()
    config = make_config(tmp_path / "c", [origin.url])
    site = replace(config.sites[0], tls=issue(ca, tmp_path, "videos", "video.test"))
    config = replace(config, sites=(site,), tls_listen=(Listen("127.0.0.1", 0),))
    ctx = trusting(ca)
    async with start_edge(config) as edge:
        assert edge.fast is not None
        assert (await edge.get("/stall.bin"))[2] == body
        writers = []
        try:
            for _ in range(clients):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", edge.ports[1]))
                _, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="video.test", limit=4096)
                writer.write(b"GET /stall.bin HTTP/1.1\r\nHost: video.test\r\n\r\n")
                writers.append(writer)
            async with asyncio.timeout(20):
                while sum(c.write_paused for c in edge.fast.connections) < clients:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            held = [c.transport.get_write_buffer_size() for c in edge.fast.connections if c.tls and c.transport]
        finally:
            for writer in writers:
                writer.close()
    assert len(held) == clients
    assert max(held) <= 2 * TLS_PIECE, held
