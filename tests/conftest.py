from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_app
from hypothesis import settings
from multidict import CIMultiDict

from edgecache.cluster.view import ClusterView
from edgecache.config import CacheSettings, Config, Listen, OriginSettings, Site
from edgecache.proxy.fastserver import FastServer
from edgecache.server import Node, make_fast, make_server, open_node, start_listeners
from tests.origin import Origin

BIG = 64 * 2**20
CLUSTER_KEY = b"0123456789abcdef" * 4  # the key the nodes of every test cluster share (core.hop)

# Timing is no test of correctness here (a loaded CI machine is slow): no per-example deadline.
settings.register_profile("edgecache", deadline=None)
settings.load_profile("edgecache")


@pytest.fixture(autouse=True)
def forget_admin_apps() -> Iterator[None]:
    """aiohttp keeps the handlers it wraps in an app's middlewares in a module-wide cache of 1,024, keyed by the
    handler and the app: every admin app a test built stayed alive through it, and its node with it (the store,
    the memory tier's bytes, the purge log's thread): 218 threads after 158 e2e tests. A node process builds one
    admin app; a test session hundreds."""
    yield
    web_app._cached_build_middleware.cache_clear()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """An empty directory of its own for a node's TMPDIR, its path short enough for the node's Unix sockets
    (core.rundirs.too_long_for_sockets), which tmp_path's is not always (pytest-xdist adds a level)."""
    path = Path(tempfile.mkdtemp(prefix="ec-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
    ports: list[int]  # of every listener, plain first, then HTTPS
    fast: FastServer | None = None  # the fast path's server (None: off)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get(self, path: str, host: str = "video.test", **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.get(self.url + path, headers={"Host": host, **headers}) as r:
            body = await r.read()
            return r.status, CIMultiDict(r.headers), body


@asynccontextmanager
async def start_edge(config: Config) -> AsyncIterator[Edge]:
    """The real edge on a loopback port: its fast path in front of aiohttp, or aiohttp alone (fast_path off)."""
    async with open_node(config) as node:
        server = make_server(node)
        # As server.run stops: requests still in flight get the config's drain, then are cut (aiohttp's own default
        # is 60 s, and it lingers 10 s reading what is left of a body the edge answered before it all came).
        runner = web.ServerRunner(server, shutdown_timeout=max(config.drain, 0.001))
        await runner.setup()
        fast = make_fast(node, server)
        sites = await start_listeners(node, runner, fast)
        ports = [site._server.sockets[0].getsockname()[1] for site in sites]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                yield Edge(node, runner, ports[0], session, ports, fast)
        finally:  # a failed assertion too: its sockets would be reported as leaked by whichever test runs next
            await runner.cleanup()
            await fast.shutdown(1.0)


# The tests that take the `edge` fixture run twice: through the fast path and through aiohttp alone, so the two
# ways of answering a request are held to the same assertions.
@pytest.fixture(params=["fast", "framework"])
async def edge(origin: Origin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    config = replace(make_config(tmp_path / "cache", [origin.url]), fast_path=request.param == "fast")
    async with start_edge(config) as e:
        yield e


async def views_settled(edges: list[Edge], holds: Callable[[ClusterView], bool], seconds: float = 10) -> None:
    """Until each node's view of its peers' health satisfies `holds` on health checks sent once every node
    listens. Seeing a peer up is not enough: peers start up, and a round of checks already under way when the
    last node began listening may still record its refusals and take a peer down after a wait that saw it up (a
    fresh-install run failed on it); two more rounds are recorded first."""
    views = [e.node.cluster for e in edges]
    after = [v.rounds + 2 if v is not None else 0 for v in views]
    async with asyncio.timeout(seconds):
        for view, rounds in zip(views, after, strict=True):
            assert view is not None
            await view.wait_for(lambda v=view, r=rounds: v.rounds >= r and holds(v))  # type: ignore[misc]


async def all_up(edges: list[Edge], ids: list[str] | None = None) -> None:
    """views_settled: every node sees each of `ids` (by default every member of its ring) up."""
    await views_settled(edges, lambda v: all(v.is_up(i) for i in (ids or [m.id for m in v.ring.members])))
