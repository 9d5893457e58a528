"""One real edge with its real admin API on loopback, for the admin tests (the cluster lives in test_purge)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edgecache.admin.app import admin_app
from edgecache.admin.jobs import JobRunner
from edgecache.admin.prefetch import prefetch_routes
from edgecache.admin.purge import purge_handler, purge_routes
from edgecache.config import Config, Site, Token
from edgecache.proxy import serverfield
from edgecache.server import start_internal
from edgecache.sites import TCPListener
from tests.conftest import Edge, make_config, start_edge
from tests.e2e.procs import free_port
from tests.origin import Origin

OPERATOR = "operator-secret-0123456789"
VIDEOS = "videos-provider-secret-0123"
TOKENS = (Token("ops", OPERATOR, "operator"), Token("videos", VIDEOS, "provider", ("videos",)))


@dataclass
class AdminNode:
    edge: Edge
    admin: str
    jobs: JobRunner
    app: web.Application
    port: int

    async def call(
        self, method: str, path: str, token: str | None = OPERATOR, **kw: Any
    ) -> tuple[int, dict[str, Any] | list[Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as s, s.request(method, self.admin + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def finished(self, job_id: str) -> dict[str, Any]:
        await asyncio.wait_for(self.jobs._tasks[job_id], 60)
        status, view = await self.call("GET", f"/prefetch/{job_id}")
        assert status == 200, view
        assert isinstance(view, dict)
        return view


def node_config(origin: Origin, cache_dir: Path, *sites: Site) -> Config:
    cfg = make_config(cache_dir, [origin.url])
    return replace(cfg, sites=(*cfg.sites, *sites), tokens=TOKENS)


@contextlib.asynccontextmanager
async def admin_node(
    cfg: Config, current: Callable[[], Config] | None = None, **runner: Any
) -> AsyncIterator[AdminNode]:
    """`current`: the running config the admin API reads (a reload changes it); `cfg` by default."""
    current = current or (lambda: cfg)
    async with start_edge(cfg) as edge, contextlib.AsyncExitStack() as stack:
        private = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecache-"))
        internal = await start_internal(edge.runner, Path(private))  # as server._start_admin does
        jobs = JobRunner(edge.node.store.disk, "http://edge", unix=str(internal), **runner)
        await jobs.start()
        stack.push_async_callback(jobs.close)
        purger = purge_handler(current, edge.node.store)
        app = admin_app(
            edge.node.ready,
            lambda: current().tokens,
            edge.node.shared.ring_view,
            purger,
            prefetch_routes(current, jobs) + purge_routes(current, edge.node.store),
        )
        web_runner = web.AppRunner(app, shutdown_timeout=max(cfg.drain, 0.001))  # as start_edge's
        await web_runner.setup()
        serverfield.follow(web_runner)  # as server._start_admin does
        stack.push_async_callback(web_runner.cleanup)
        port = free_port()
        await TCPListener(web_runner, "127.0.0.1", port).start()
        yield AdminNode(edge, f"http://127.0.0.1:{port}", jobs, app, port)
