"""The admin listener: metrics and health now; purge and prefetch APIs join it. Never on the client port."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from edgecache import metrics


def admin_app(ready: Callable[[], tuple[bool, str]]) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        body, ctype = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=("ready" if ok else why) + "\n")

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
