"""The `heads` fuzz target: the fast path refuses exactly what the full path refuses (issue 13).

Each input is a request head close to what a player sends, then bent where HTTP parsers draw their lines: field
counts around aiohttp's 128, request lines and fields around 8,190 bytes, odd bytes in names and values, repeated
fields that must occur once, version strings, bare LF and obs-fold, a Range line on top, and a second request
pipelined behind. It is sent, followed by a closing request, to two real edges that both hold the object: one
answers hits on its fast path, the other has the fast path off (aiohttp answers everything). The statuses the two
give, in order, must be the same; a difference is a finding named after the pair of statuses.

The edges, and the origin behind them, run in a child process (`python -m loadtest.fuzz_heads DIR`, started on
first use); the check talks to them over blocking loopback sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from edgecache.config import CacheSettings, Config, Listen, OriginSettings, Site
from edgecache.server import make_fast, make_server, open_node, start_listeners
from loadtest.fuzzgen import G

BODY = b"0123456789abcdef" * 64  # never holds a status line
PATHS = ("/obj", "/obj", "/obj", "/sub/obj2", "/obj?a=1", "/missing")
CLOSE = b"GET /obj HTTP/1.1\r\nHost: video.test\r\nConnection: close\r\n\r\n"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
_SINGLETONS = ("User-Agent", "Content-Type", "ETag", "Server", "Max-Forwards", "Content-Location", "Content-Range")
_NAMES = ("Accept", "Accept-Encoding", "User-Agent", "Cookie", "X-Player", "Referer", "If-None-Match", "Pragma")
_VERSIONS = ("HTTP/1.1",) * 12 + ("HTTP/1.0", "HTTP/2", "HTTP/1.10", "http/1.1", "HTTP/01.1", "HTTP/1.1 ", "HTTP/9.9")
_ODD = (*(chr(c) for c in (0, 1, 8, 11, 12, 13, 27, 31, 127, 128, 160, 255)), " ", '"', "(", ",", "/", ":")
_LIMIT = 8190  # aiohttp's line and field limit: lengths are drawn around it


def _value(g: G) -> str:
    x = g.rand()
    if x < 0.7:
        return g.token(20)
    if x < 0.8:
        return g.token(8) + g.pick(_ODD) + g.token(8)
    if x < 0.9:
        return g.token(4) + g.pick(("", " ", "\t", "  "))
    return "v" * (_LIMIT - 40 + g.randrange(80))


def _name(g: G) -> str:
    x = g.rand()
    if x < 0.85:
        return g.pick(_NAMES) if g.chance(0.5) else "X-" + g.token(10)
    if x < 0.95:
        return "X-" + g.token(4) + g.pick(_ODD) + g.token(4)
    return "N" * (_LIMIT - 5 + g.randrange(10))


def _fields(g: G) -> list[tuple[str, str]]:
    x = g.rand()
    count = g.randrange(6) if x < 0.75 else 120 + g.randrange(16) if x < 0.95 else 250 + g.randrange(100)
    fields = [(_name(g), _value(g)) for _ in range(count)]
    if g.chance(0.1):
        name = g.pick(_SINGLETONS)
        fields += [(name, g.token(6)), (name.lower() if g.chance(0.5) else name, g.token(6))]
    if g.chance(0.3):
        fields.append(("Range", g.pick(("bytes=0-9", "bytes=5-", "bytes=-3", "bytes=100-200", "bytes=0-0,5-6"))))
    if g.chance(0.05):
        fields.append(("Content-Length", "0"))
    return fields


def _target(g: G) -> str:
    path = g.pick(PATHS)
    x = g.rand()
    if x < 0.85:
        return path
    if x < 0.93:
        return path + "?" + "q" * (_LIMIT - 30 + g.randrange(60))
    return path + g.pick(_ODD) + g.token(3)


def head(g: G) -> bytes:
    """One request head (or two, pipelined), ending in a blank line."""
    method = "GET" if g.chance(0.85) else g.pick(("HEAD", "HEAD", "POST", "get", "G\x00T", "OPTIONS"))
    lines = [f"{method} {_target(g)} {g.pick(_VERSIONS)}"]
    fields = _fields(g)
    host = ("Host", "video.test")
    if g.chance(0.95):
        fields.insert(g.randrange(len(fields) + 1), host)
    if g.chance(0.03):
        fields.append(("Host", g.pick(("video.test", "other.test"))))
    lines += [f"{k}:{g.pick((' ', ' ', '', '  ', chr(9)))}{v}" for k, v in fields]
    eol = "\r\n"
    if g.chance(0.03):
        eol = "\n"
    text = eol.join(lines) + eol + eol
    if g.chance(0.03) and len(lines) > 1:
        text = text.replace("\r\n", "\r\n \r\n", 1)  # obs-fold
    raw = text.encode("latin-1")
    if g.chance(0.1) and not closes(raw):
        # Pipelined behind it: a valid head only. After a bad one, aiohttp answers 400 for everything that came in
        # the same read (a valid head before it included), so the statuses would depend on TCP segmentation.
        raw += b"GET /obj HTTP/1.1\r\nHost: video.test\r\nRange: bytes=1-2\r\n\r\n"
    return raw


def closes(raw: bytes) -> bool:
    """An HTTP/1.0 head without keep-alive: its connection ends with its answer, and nothing may follow it. What
    did would be answered by segmentation: aiohttp refuses a head's answer with 400 when more bytes came in the same
    read, and answers it when they came later; the fast path answers it and reads no further (RFC 9112 9.6)."""
    line, _, rest = raw.partition(b"\r\n")
    return line.endswith(b" HTTP/1.0") and b"keep-alive" not in rest.lower()


def with_close(data: bytes) -> bytes:
    """`data`, then the closing request unless `data` closes the connection itself."""
    return data if closes(data) else data + CLOSE


def gen_heads(g: G) -> tuple[bytes]:
    return (head(g),)


def statuses(raw: bytes) -> list[int]:
    """The status of every response in `raw`, in order (no body here holds a status line and its CRLF)."""
    return [int(m) for m in _STATUS.findall(raw)]


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """`data` and then the closing request on a fresh connection; everything read until the edge closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionError):  # refused and closed early: what it answered is still there
            sock.sendall(with_close(data))
        parts = []
        try:
            while chunk := sock.recv(65536):
                parts.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            parts.append(b"\nHTTP/1.1 999 (no end within the timeout) ")
        return b"".join(parts)


# --- the two edges ------------------------------------------------------------------------------------------


async def _origin(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/missing":
        return web.Response(status=404, body=b"none", headers={"Cache-Control": "max-age=86400"})
    headers = {"Cache-Control": "public, max-age=86400", "ETag": '"v1"', "Content-Type": "application/octet-stream"}
    return web.Response(body=BODY, headers=headers)


def config(cache_dir: Path, origin: str, fast_path: bool) -> Config:
    """An edge in front of `origin` for site video.test, with or without its fast path."""
    site = Site(name="videos", hosts=("video.test",), origins=(origin,))
    cache = CacheSettings(dir=cache_dir, memory_bytes=16 * 2**20, disk_bytes=64 * 2**20, slice_bytes=2**20)
    return Config(
        source="fuzz",
        listen=(Listen("127.0.0.1", 0),),
        cache=cache,
        origin=OriginSettings(connect_timeout=2.0, read_timeout=5.0),
        sites=(site,),
        fast_path=fast_path,
    )


def warm(port: int) -> None:
    """Every object the heads ask for, fetched once so the edge holds it."""
    for path in PATHS:
        raw = exchange(port, f"GET {path} HTTP/1.1\r\nHost: video.test\r\n\r\n".encode())
        if statuses(raw) not in ([200, 200], [404, 200]):
            raise RuntimeError(f"warming {path} failed: {statuses(raw)} {raw[-300:]!r}")


async def serve(cache_dir: Path) -> None:
    """The origin and the two edges; prints `fast-port full-port` once they listen, then serves until killed."""
    runner = web.ServerRunner(web.Server(_origin), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    ports = []
    async with contextlib.AsyncExitStack() as stack:
        for name, fast in (("fast", True), ("full", False)):
            node = await stack.enter_async_context(open_node(config(cache_dir / name, origin, fast)))
            server = make_server(node)
            edge_runner = web.ServerRunner(server)
            await edge_runner.setup()
            sites = await start_listeners(node, edge_runner, make_fast(node, server))
            ports.append(sites[0]._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        print(*ports, flush=True)
        await asyncio.Event().wait()


class Edges:
    """The edges in a child process of their own: the fuzzer's address-space limit and GIL are not theirs."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="edgecache-heads-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.fuzz_heads", self._dir.name],
            stdout=subprocess.PIPE,
            preexec_fn=_unlimited,
        )
        atexit.register(self.proc.kill)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2:
            raise RuntimeError("the fuzz edges did not start")
        self.ports = (int(line[0]), int(line[1]))
        for port in self.ports:
            warm(port)


def _unlimited() -> None:
    """In the child before it runs: no address-space limit (the fuzzer sets one for the code it calls itself)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


_EDGES: list[Edges] = []


def edges() -> Edges:
    if not _EDGES:
        _EDGES.append(Edges())
    return _EDGES[0]


def compare(head: bytes) -> tuple[list[int], list[int]]:
    """The statuses the fast-path edge and the full-path edge give for `head` (then the closing request)."""
    fast_port, full_port = edges().ports
    return statuses(exchange(fast_port, head)), statuses(exchange(full_port, head))


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)  # a 400 per bad head is the point, not news
    asyncio.run(serve(Path(sys.argv[1])))
