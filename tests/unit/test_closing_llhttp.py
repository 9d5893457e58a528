"""core.closing against the parser it stands in front of: aiohttp's (llhttp), on generated pipelines.

Where the scanner cuts (a request that closes its connection has ended), llhttp, fed exactly the bytes passed on,
must have ended a request that closes the connection there, and none before. Cut anywhere else, the requests
pipelined after a keep-alive one were dropped unanswered (the connection left open, the client hanging), or a
body was cut short (aiohttp waiting for the rest forever). Where llhttp refuses what was passed (a 400, then
closed) the cut changes nothing. Not cutting is always safe: aiohttp judges every byte, as before core.closing.
The generator leans on what the two read apart: Connection tokens, versions, Content-Length and
Transfer-Encoding spellings, chunk-size lines, trailers.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser

from edgecache.core import admit
from edgecache.core.closing import START, Kind, Scan, scan

SPACES = [b"", b" ", b"\t", b"  "]
TOKENS = [b"close", b"keep-alive", b"Close", b"KEEP-ALIVE", b"closex", b"clos", b"foo", b"", b"te", b"keep-alives"]
LENGTHS = ["{n}", "0{n}", "{n}, {n}", "+{n}", "", "{m}", "{n} ", "{n}\t"]
CODINGS = [b"chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"CHUNKED", b"chunked,", b"x-chunked"]
CODINGS += [b"chunked;q=1", b"gzip , chunked", b"chunked, chunked"]


def _scan_all(pieces: list[bytes]) -> tuple[int, Scan]:
    state, passed = START, 0
    for piece in pieces:
        state, n = scan(state, piece)
        passed += n
    return passed, state


def _llhttp(data: bytes) -> tuple[list[tuple[int, bool]], bool]:
    """Where llhttp, fed byte by byte, ends each request (offset after it, closes the connection: says so, or is of
    a version either path answers with a 505 and the close, core.admit.version), and whether it refused the bytes
    (a 400)."""
    parser = HttpRequestParser(BaseProtocol(asyncio.get_running_loop()), asyncio.get_running_loop(), 2**16)
    payloads: list[tuple[bool, Any]] = []
    ends: list[tuple[int, bool]] = []
    for at in range(len(data)):
        try:
            messages, upgraded, _ = parser.feed_data(data[at : at + 1])
        except HttpProcessingError:  # a 400
            return ends, True
        payloads += [(m.should_close or admit.version(*m.version) is not None, p) for m, p in messages]
        ends += [(at + 1, closes) for closes, p in payloads[len(ends) :] if p.is_eof()]
        assert not upgraded
    return ends, False


def _request(r: random.Random) -> bytes:
    n = r.randint(0, 12)
    fields = [(b"Host", b"h")] if r.random() < 0.9 else []
    for _ in range(r.randint(0, 4)):
        k = r.random()
        if k < 0.35:
            tokens = [r.choice(SPACES) + r.choice(TOKENS) + r.choice(SPACES) for _ in range(r.randint(1, 3))]
            name = r.choice([b"Connection", b"connection", b"Proxy-Connection"])
            fields.append((name, r.choice([b",", b", ", b" "]).join(tokens)))
        elif k < 0.55:
            fields.append((b"Content-Length", r.choice(LENGTHS).format(n=n, m=n + 1).encode()))
        elif k < 0.75:
            fields.append((b"Transfer-Encoding", r.choice(SPACES) + r.choice(CODINGS)))
        else:
            fields.append((r.choice([b"X-A", b"Keep-Alive", b"TE", b"Expect"]), r.choice([b"1", b"close", b""])))
    r.shuffle(fields)
    line = b" ".join([r.choice([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT"]), r.choice([b"/a", b"*", b"http://h/a"])])
    line += b" " + r.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"])
    head = line + b"\r\n" + b"".join(k + b":" + r.choice([b" ", b""]) + v + b"\r\n" for k, v in fields) + b"\r\n"
    names = {k.lower() for k, _ in fields}
    if b"transfer-encoding" in names:
        return head + _chunks(r)
    return head + (bytes(r.choice(b"abGET \r\n") for _ in range(n)) if b"content-length" in names else b"")


def _chunks(r: random.Random) -> bytes:
    out = b""
    for _ in range(r.randint(0, 3)):
        n = r.randint(1, 20)
        size = r.choice([b"%x" % n, b"%X" % n, b"0%x" % n, b"%x;e=1" % n, b"%x ;e" % n, b'%x;e="q"' % n, b"%x;" % n])
        out += size + b"\r\n" + bytes(r.choice(b"ab\r\n0") for _ in range(n)) + r.choice([b"\r\n", b"\r\n", b"\n"])
    trailers = r.choice([b"", b"", b"X: y\r\n", b"Connection: close\r\n", b"X:y\r\nZ: w\r\n", b"X: y\nZ: w\r\n"])
    return out + r.choice([b"0", b"00", b"0;e=1"]) + b"\r\n" + trailers + b"\r\n"


@pytest.mark.parametrize("seed", range(4))
async def test_the_scanner_cuts_only_where_llhttp_ends_a_closing_request(seed: int) -> None:
    r = random.Random(seed)
    cuts = 0
    for _ in range(1000):
        data = b"".join(_request(r) for _ in range(r.randint(1, 3)))
        data += r.choice([b"", b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n", b"junk", b"\r\n"])
        passed, state = _scan_all([data])
        assert _scan_all([data[i : i + 1] for i in range(len(data))]) == (passed, state), data
        if state.kind is not Kind.DONE:
            continue
        ends, refused = _llhttp(data[:passed])
        if refused:
            continue
        cuts += 1
        assert ends[-1:] == [(passed, True)], (data, passed, ends)
        assert not any(closes for _, closes in ends[:-1]), (data, passed, ends)
    assert cuts >= 10  # the generator reaches the cut, not only the framings the scanner leaves to aiohttp
