from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import settings
from multidict import CIMultiDict

from edgecache.config import CacheSettings, Config, Listen, OriginSettings, Site
from edgecache.server import Node, make_server, open_node
from tests.origin import Origin

BIG = 64 * 2**20

# Timing is no test of correctness here (a loaded CI machine is slow): no per-example deadline.
settings.register_profile("edgecache", deadline=None)
settings.load_profile("edgecache")


@pytest.fixture(scope="session")
def big_bytes() -> bytes:
    return os.urandom(BIG)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = Origin()
    await o.start()
    yield o
    await o.stop()


def make_config(cache_dir: Path, origins: list[str], **cache: int) -> Config:
    settings = CacheSettings(dir=cache_dir, memory_bytes=64 * 2**20, disk_bytes=1024 * 2**20, slice_bytes=2**20)
    settings = replace(settings, **cache)
    site = Site(name="videos", hosts=("video.test", "*.cdn.test"), origins=tuple(origins))
    return Config(
        source="test",
        listen=(Listen("127.0.0.1", 0),),
        cache=settings,
        origin=OriginSettings(connect_timeout=2.0, read_timeout=5.0),
        sites=(site,),
    )


@dataclass
class Edge:
    node: Node
    runner: web.ServerRunner
    port: int
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str, host: str = "video.test", **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.get(self.url + path, headers={"Host": host, **headers}) as r:
            body = await r.read()
            return r.status, CIMultiDict(r.headers), body


@asynccontextmanager
async def start_edge(config: Config) -> AsyncIterator[Edge]:
    async with open_node(config) as node:
        runner = web.ServerRunner(make_server(node))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", config.listen[0].port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Edge(node, runner, port, session)
        await runner.cleanup()


@pytest.fixture
async def edge(origin: Origin, tmp_path: Path) -> AsyncIterator[Edge]:
    async with start_edge(make_config(tmp_path / "cache", [origin.url])) as e:
        yield e
