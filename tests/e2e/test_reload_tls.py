"""A reload's certificates are loaded off the worker's loop, bounded in time as its read of the config is (readoff).

The reload read the config file and every file it names in a thread, then loaded the certificates again on the
loop (Certificates.load): a certificate that stalled between the two reads (a stalled mount; here a FIFO put in
its place) stopped the worker serving until the read returned.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import trustme

from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_reload import _until, _worker
from tests.e2e.test_tls import fetch, issue
from tests.origin import Origin

BODY = b"v" * 5000
SECRET = "a-signing-secret-0123456789"
CONFIG = """
[server]
listen = ["127.0.0.1:{port}"]
tls_listen = ["127.0.0.1:{tls_port}"]
[cache]
dir = "{cache}"
disk = "64MiB"
[[sites]]
name = "videos"
hosts = ["video.test"]
origins = ["{origin}"]
[sites.tls]
cert = "{cert}"
key = "{key}"
[[sites]]
name = "signed"
hosts = ["signed.test"]
origins = ["{origin}"]
[sites.signing]
{secrets}
"""


async def hit(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v.bin HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n")
        return await reader.read(-1)
    finally:
        writer.close()


async def test_a_certificate_that_stalls_during_a_reload_stops_no_serving(origin: Origin, tmp_path: Path) -> None:
    origin.put("/v.bin", BODY)
    ca = trustme.CA()
    files = issue(ca, tmp_path, "videos", "video.test")
    port, tls_port = free_port(), free_port()
    path, secret, stall = tmp_path / "edge.toml", tmp_path / "secret.fifo", tmp_path / "cert.fifo"
    os.mkfifo(secret)
    os.mkfifo(stall)

    def write(secrets: str) -> None:
        path.write_text(
            CONFIG.format(
                port=port,
                tls_port=tls_port,
                cache=tmp_path / "c",
                origin=origin.url,
                cert=files.cert,
                key=files.key,
                secrets=secrets,
            )
        )

    write(f'secrets = ["{SECRET}"]')
    pem = files.cert.read_bytes()
    async with edge_process("serve", "--config", str(path), ready={b"edgecache listening on": 2}) as proc:
        first = await hit(port)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert first.endswith(BODY)
        # The site after the certificate's reads its secret from a FIFO: the reload's read of the file waits there,
        # its certificate checked already, while the certificate's path becomes a FIFO nobody writes yet.
        write(f'secret_file = "{secret}"')
        os.kill(_worker(proc.pid), signal.SIGHUP)
        with await asyncio.to_thread(open, secret, "w") as writer:
            stall.replace(files.cert)
            writer.write(SECRET + "\n")
        # Opened for writing once the reload opens the certificate to read it; nothing written, it waits in the read.
        stalled = await asyncio.to_thread(open, files.cert, "wb")
        try:
            for _ in range(3):
                async with asyncio.timeout(5):
                    answer = await hit(port)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
                assert b"Cache-Status: edgecache; hit" in answer
                assert answer.endswith(BODY)
            stalled.write(pem)
        finally:
            stalled.close()
        assert b"reloaded" in await _until(proc, b"reloaded", b"reload rejected")
        assert (await fetch(tls_port, ca, "video.test", "video.test", "/v.bin")).endswith(BODY)
    assert origin.hits["/v.bin"] == 1
