"""Odd but legal GET and HEAD exchanges, and malformed heads, answered by a real node with no connection handed to
aiohttp (issue 14): each answer's exact status, fields and body, then edgecache_fast_path_total{outcome="handed_off"}
read from the node's own /metrics, which must stay at 0."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import encode
from tests.e2e.procs import edge_process, free_port
from tests.e2e.test_operations import metric
from tests.origin import Origin
from tests.wire import exchange, read_answer

BODY = bytes(range(256)) * 40  # 10,240 bytes
HOST = b"Host: video.test\r\n"


def parse_error(answer: bytes, reason: str) -> bytes:
    """aiohttp's answer to a head its parser refuses (proxy.badhead.Handler), with the Date of `answer`: HTTP/1.0,
    400, our reason, no Connection field (an HTTP/1.0 answer closes)."""
    date = re.search(rb"\r\nDate: ([^\r]*)\r\n", answer)
    body = reason.encode()
    fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    head = encode.head(400, "Bad Request", fields, date.group(1) if date else b"", KeepAlive.CLOSE_10)
    assert head is not None
    return head + body


async def answers(port: int, data: bytes, n: int) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """`n` answers with a Content-Length body each, to `data` sent on one connection (pipelined)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(20):
            return [await read_answer(reader) for _ in range(n)]
    finally:
        writer.close()


async def legal(port: int) -> None:
    get = b"GET /v.bin HTTP/1.1\r\n" + HOST + b"\r\n"
    (s1, _, b1), (s2, f2, b2) = await answers(port, get + get, 2)  # a miss, then a hit, pipelined
    assert (s1, b1, s2, b2) == (200, BODY, 200, BODY)
    assert f2[b"content-length"] == b"10240"
    cases = [
        (b"", 200, b"HEAD"),  # its Content-Length is the GET's, and no body follows
        (b'If-None-Match: "v1"\r\n', 304, b""),
        (b'If-Match: "other"\r\n', 412, None),
        (b"Range: bytes=20000-\r\n", 416, None),
        (b"Range: bytes=10-19\r\n", 206, BODY[10:20]),
        (b"Range: bytes=-5\r\n", 206, BODY[-5:]),
    ]
    for extra, want, want_body in cases:
        method = b"HEAD" if want_body == b"HEAD" else b"GET"
        close = b"Connection: close\r\n"  # the answer ends with the connection: no body is waited for by its length
        answer = await exchange(port, method + b" /v.bin HTTP/1.1\r\n" + HOST + extra + close + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert int(head.split(b" ", 2)[1]) == want, (extra, head)
        if method == b"HEAD":
            assert (b"\r\nContent-Length: 10240" in head, body) == (True, b"")
        elif want_body is not None:
            assert body == want_body
    multi = b"GET /v.bin HTTP/1.1\r\n" + HOST + b"Range: bytes=0-1,100-102\r\n\r\n"
    [(status, fields, body)] = await answers(port, multi, 1)
    boundary = fields[b"content-type"].split(b"boundary=")[1]
    assert status == 206
    parts = [p for p in body.split(b"--" + boundary) if p.strip(b"\r\n-")]
    assert [p.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") for p in parts] == [BODY[0:2], BODY[100:103]]


BAD = [
    (
        b"GET /v.bin HTTP/1.1\r\n" + HOST + b"X-Long: " + b"v" * 9000 + b"\r\n\r\n",
        "request line or header field too long\n",
    ),
    (
        b"GET /v.bin HTTP/1.1\r\n" + HOST + b"".join(b"X-F%d: v\r\n" % i for i in range(300)) + b"\r\n",
        "malformed request\n",
    ),
    (b"GET /v.bin HTTP/1.1\r\n" + HOST + b"Accept: a\x00b\r\n\r\n", "malformed request\n"),
    (b"HEAD /v.bin HTTP/1.1\r\nContent-Type: a\r\nContent-Type: b\r\n" + HOST + b"\r\n", "malformed request\n"),
    (b"GET /v.bin HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n", "malformed request\n"),  # obs-fold
    (b"GET /v.bin HTTP/1.1\nHost: video.test\n\n", "invalid request line\n"),  # bare LFs, no CRLF CRLF at all
    (
        b"GET * HTTP/1.1\r\n" + HOST + b"\r\n",
        "invalid request target: an absolute path, an absolute URL, or * for OPTIONS only\n",
    ),
    (b"G<b>T /v.bin HTTP/1.1\r\n" + HOST + b"\r\n", "invalid method\n"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "Received HTTPS traffic on an HTTP port"),
]


async def test_odd_requests_are_answered_without_a_hand_off(origin: Origin, tmp_path: Path) -> None:
    """Before, every malformed head was handed to aiohttp for its 400 (the commonest hand-off in tests/e2e)."""
    origin.put("/v.bin", BODY)
    port, admin = free_port(), free_port()
    args = ["--origin", origin.url, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    async with edge_process(
        "serve", *args, "--cache-dir", str(tmp_path / "cache"), "--workers", "1", ready={b"admin listening on": 1}
    ):
        await legal(port)
        for head, reason in BAD:
            answer = await exchange(port, head + b"GET /v.bin HTTP/1.1\r\n" + HOST + b"\r\n")
            assert answer == parse_error(answer, reason), head[:40]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
            text = await r.text()
    assert origin.hits["/v.bin"] == 1
    assert metric(text, "edgecache_fast_path_total", outcome="answered") > 0
    assert metric(text, "edgecache_fast_path_total", outcome="handed_off") == 0
