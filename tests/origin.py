"""A real aiohttp origin on 127.0.0.1 that counts its hits and can misbehave on demand.

Range handling here is written independently of edgecache's (one range, the simple forms) so a bug in the
edge's range maths cannot hide behind the same bug in the origin.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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

    async def start(self) -> None:
        server = web.Server(self._handle)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
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
        self.seen.append(Seen(request.method, path, dict(request.headers)))
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
                    return web.Response(status=416, headers={"Content-Range": f"bytes */{length}"})
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
