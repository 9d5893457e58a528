"""A real aiohttp origin on 127.0.0.1 that counts its hits and can misbehave on demand.

Range handling here is written independently of edgecache's (one range, the simple forms) so a bug in the
edge's range maths cannot hide behind the same bug in the origin.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# The node's loop token in the Via of its fills (proxy.origin.loop_token) differs between the caches of two runs
# that tests compare: `seen` reads it as "(node)".
_NODE_VIA = re.compile(r"(1\.1 edgecache) \([0-9a-f]{12}\)")


@dataclass
class Obj:
    data: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Sat, 01 Nov 2025 00:00:00 GMT"
    headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "public, max-age=3600"})
    status: int = 200
    ignore_range: bool = False
    content_type: str = "application/octet-stream"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class Origin:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.hits: Counter[str] = Counter()
        self.seen: list[Seen] = []
        self.gate: asyncio.Event | None = None  # when set, responses wait for it before sending a body
        self.arrived = asyncio.Condition()
        self.on_request: object = None  # optional hook(request, obj) -> Obj | None, for faults
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, path: str, data: bytes, **kw: object) -> Obj:
        obj = Obj(data, **kw)  # type: ignore[arg-type]
        self.objects[path] = obj
        return obj

    def range_hits(self, path: str) -> list[str | None]:
        return [s.headers.get("Range") for s in self.seen if s.path == path]

    async def wait_for_requests(self, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.seen) >= n)

    async def start(self, port: int = 0) -> None:
        """On `port` (0: any free one; a peer's stand-in takes the port its cluster was told)."""
        server = web.Server(self._handle)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()  # a test that failed while holding responses must not hold the shutdown too
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path
        self.hits[path] += 1
        headers = dict(request.headers)
        if "Via" in headers:
            headers["Via"] = _NODE_VIA.sub(r"\1 (node)", headers["Via"])
        self.seen.append(Seen(request.method, path, headers))
        async with self.arrived:
            self.arrived.notify_all()
        body = await request.read()
        if request.method in ("PUT", "POST"):
            self.objects[path] = Obj(body)
            return web.Response(status=201, text="stored\n")
        if request.method == "DELETE":
            self.objects.pop(path, None)
            return web.Response(status=204)
        obj = self.objects.get(path.split("?", 1)[0]) or self.objects.get(path)
        if callable(self.on_request):
            replaced = self.on_request(request, obj)
            if inspect.isawaitable(replaced):
                replaced = await replaced
            if isinstance(replaced, web.StreamResponse):
                return replaced
            obj = replaced if replaced is not None else obj
        if obj is None:
            return web.Response(status=404, text="no such object\n", headers={"Cache-Control": "max-age=60"})
        headers = {"Content-Type": obj.content_type, **obj.headers}
        if obj.etag:
            headers["ETag"] = obj.etag
        if obj.last_modified:
            headers["Last-Modified"] = obj.last_modified
        inm = request.headers.get("If-None-Match")
        if inm and obj.etag and inm == obj.etag:
            return web.Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
        status, body_bytes = obj.status, obj.data
        rng = request.headers.get("Range")
        if rng and not obj.ignore_range and obj.status == 200:
            m = _RANGE.match(rng)
            length = len(obj.data)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    first = int(m.group(1))
                    last = min(int(m.group(2)), length - 1) if m.group(2) else length - 1
                else:
                    first, last = max(0, length - int(m.group(2))), length - 1
                if first >= length:
                    # The object's own fields too (Cache-Control, say), as nginx's add_header always gives them.
                    return web.Response(status=416, headers={**obj.headers, "Content-Range": f"bytes */{length}"})
                status, body_bytes = 206, obj.data[first : last + 1]
                headers["Content-Range"] = f"bytes {first}-{last}/{length}"
        if self.gate is not None:
            await self.gate.wait()
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body_bytes)
        await resp.prepare(request)
        if request.method != "HEAD":
            for i in range(0, len(body_bytes), 256 * 1024):
                await resp.write(body_bytes[i : i + 256 * 1024])
        await resp.write_eof()
        return resp


@dataclass
class RawRequest:
    """A request exactly as it reached a RawOrigin: its head, and its body's bytes as framed on the wire."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased; a repeated field keeps its last value
    head: bytes
    body: bytes  # chunk sizes and trailers included when the request was chunked

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


# (response bytes, close the connection after them)
RawReply = tuple[bytes, bool]


class RawOrigin:
    """An origin on 127.0.0.1 that writes exact bytes: 1xx heads, trailers, close-delimited bodies, any framing.

    `reply(request)` gives the bytes to send and whether to close afterwards; every request is counted by path
    and kept (head and body bytes) in `seen`. Bounded on purpose: heads up to 64 KiB, bodies up to 1 MiB.
    """

    MAX_BODY = 2**20

    def __init__(self, reply: Callable[[RawRequest], RawReply]) -> None:
        self.reply = reply
        self.hits: Counter[str] = Counter()
        self.seen: list[RawRequest] = []
        self.port = 0
        self.receiving = 0  # requests whose head is in and whose body is not yet
        self.changed = asyncio.Condition()  # notified when `receiving` changes
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=64 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            await self._server.wait_closed()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def _receiving(self, change: int) -> None:
        async with self.changed:
            self.receiving += change
            self.changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while (request := await self._next_request(reader)) is not None:
                self.hits[request.path] += 1
                self.seen.append(request)
                data, close = self.reply(request)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the edge went away mid-request, or sent what this small parser refuses: drop the connection
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _next_request(self, reader: asyncio.StreamReader) -> RawRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None  # closed between requests
        await self._receiving(+1)
        try:
            return await _read_request(head, reader, self.MAX_BODY)
        finally:
            await self._receiving(-1)


async def _read_request(head: bytes, reader: asyncio.StreamReader, max_body: int) -> RawRequest:
    line, *fields = head[:-4].decode("latin-1").split("\r\n")
    method, path, _ = line.split(" ", 2)
    headers = {}
    for f in fields:
        name, _, value = f.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader, max_body)
    else:
        length = int(headers.get("content-length", "0"))
        if length > max_body:
            raise ValueError("request body too large for this test origin")
        body = await reader.readexactly(length)
    return RawRequest(method, path, headers, head, body)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    """The chunked body as framed (sizes, data, last chunk, trailers), read to its end."""
    raw = b""
    while len(raw) <= max_body:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                raw += line  # a trailer field
            return raw + b"\r\n"
        raw += await reader.readexactly(size + 2)
    raise ValueError("request body too large for this test origin")
