"""The admin listener: metrics, health, ring, purge and prefetch APIs. Never on the client port.

Every route but auth.PUBLIC needs a bearer token (auth.guard). Admin input is client input: a URL that does
not parse, or one no site has, is a 4xx with a reason, never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

from edgecache import metrics
from edgecache.admin.auth import authorize, guard, token_of, unknown
from edgecache.cluster.purgesync import PURGE_PATH
from edgecache.config import Token
from edgecache.core.siteurl import NotSiteURL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_app(
    ready: Callable[[], tuple[bool, str]],
    tokens: Callable[[], tuple[Token, ...]],
    ring: Callable[[str], dict[str, object]] | None = None,
    purge: Handler | None = None,
    routes: list[web.RouteDef] | None = None,
    members: Callable[[], Collection[str]] | None = None,
    sites: Callable[[], Collection[str]] | None = None,
) -> web.Application:
    """`tokens` gives the running config's tokens, so a reload (SIGHUP) changes them at once; `members` the
    cluster's members now (their peer metrics alone are shown); `sites` the config's site names now (the series of
    a site a reload removed are not shown)."""

    async def get_metrics(request: web.Request) -> web.Response:
        now = members() if members is not None else None
        body, ctype = metrics.exposition(now, sites() if sites is not None else None)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=("ready" if ok else why) + "\n")

    async def ring_lookup(request: web.Request) -> web.Response:
        url = request.query.get("url")
        if not url or ring is None:
            return web.json_response({"error": "give ?url=http://host/path"}, status=400)
        try:
            answer = ring(url)
        except NotSiteURL as exc:  # a host no site has: 404 (to an operator); anything else this node cannot key: 400
            if exc.unknown_host:
                unknown(token_of(request))
            return web.json_response({"url": url, "error": str(exc)}, status=404 if exc.unknown_host else 400)
        authorize(token_of(request), str(answer["site"]))  # another provider's site, its key and nodes: 403
        return web.json_response(answer)

    # Larger bodies get 413 before any parsing.
    app = web.Application(client_max_size=1024 * 1024, middlewares=[guard(tokens)])
    app.router.add_get("/ring", ring_lookup)
    if purge is not None:
        app.router.add_post(PURGE_PATH, purge)
    app.router.add_routes(routes or [])
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
