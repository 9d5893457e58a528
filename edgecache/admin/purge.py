"""POST /purge: one URL (every variant and slice), a directory prefix, or a whole site; hard or soft; applied on
this node and on every peer, answering how many nodes confirmed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from edgecache import metrics
from edgecache.admin.auth import authorize, token_of
from edgecache.config import Config, Site, Token
from edgecache.core.keys import BadTarget, make_key
from edgecache.core.purge import TableFull
from edgecache.core.route import Router, normalise_host
from edgecache.storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeOrder:
    site: Site
    kind: str  # "url" | "prefix" | "site"
    host: str = ""
    path: str = ""  # the normalised target (url) or directory (prefix)
    soft: bool = False


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}) + "\n", content_type="application/json")


def parse_order(body: Any, sites: tuple[Site, ...]) -> PurgeOrder:
    if not isinstance(body, dict):
        raise _bad("expected a JSON object with one of url, prefix or site")
    kinds = [k for k in ("url", "prefix", "site") if k in body]
    if len(kinds) != 1:
        raise _bad("give exactly one of url, prefix or site")
    soft = body.get("soft", False)
    if not isinstance(soft, bool):
        raise _bad("soft must be true or false")
    kind = kinds[0]
    value = body[kind]
    if not isinstance(value, str) or not value or len(value) > 8192:
        raise _bad(f"{kind} must be a non-empty string")
    if kind == "site":
        site = next((s for s in sites if s.name == value), None)
        if site is None:
            raise _bad(f"no site named {value!r}")
        return PurgeOrder(site, "site", soft=soft)
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise _bad(f"{kind} is not a URL: {exc}") from exc
    host = normalise_host(parts.netloc)
    if parts.scheme not in ("http", "https") or host is None:
        raise _bad(f"{kind} must be an absolute http(s) URL")
    site = Router((s.hosts, s) for s in sites).match(host)
    if site is None:
        raise _bad(f"no site is configured for host {host!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        key = make_key(site.name, host, target, site.key_query)
    except BadTarget as exc:
        raise _bad(str(exc)) from exc
    if kind == "prefix":
        if parts.query or not key.path.endswith("/"):
            raise _bad("a prefix is a directory: it ends with '/' and has no query")
        return PurgeOrder(site, "prefix", host, key.path, soft)
    return PurgeOrder(site, "url", host, key.target, soft)


async def apply(store: Store, order: PurgeOrder) -> None:
    """TableFull when a prefix or site purge finds no room in the purge table (nothing changed then)."""
    now = time.time()
    if order.kind == "url":
        primary = make_key(order.site.name, order.host, order.path, order.site.key_query).primary
        await (store.soft_invalidate(primary, now) if order.soft else store.invalidate(primary))
    elif order.kind == "prefix":
        await store.purge_scope((order.site.name, order.host, order.path), order.soft, now)
    else:
        await store.purge_scope((order.site.name, "", ""), order.soft, now)
    metrics.PURGES.labels(order.kind, "soft" if order.soft else "hard").inc()


async def _tell_peer(session: aiohttp.ClientSession, admin: str | None, body: dict[str, Any], auth: str) -> bool:
    if admin is None:
        return False  # a peer without an admin listener cannot be told (never its client port: that is an origin's)
    try:
        async with session.post(
            f"http://{admin}/purge",
            json={**body, "local": True},
            headers={"Authorization": auth},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r:
            return r.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


def purge_handler(current: Callable[[], Config], store: Store) -> Any:
    """`current` gives the running config, so a reload (SIGHUP) changes tokens and sites at once."""

    async def handle(request: web.Request) -> web.Response:
        config = current()
        token: Token = token_of(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"body is not JSON: {exc.__class__.__name__}") from exc
        order = parse_order(body, config.sites)
        authorize(token, order.site.name)
        try:
            await apply(store, order)
        except TableFull as exc:
            raise web.HTTPTooManyRequests(
                text=json.dumps({"error": str(exc)}) + "\n", content_type="application/json"
            ) from exc
        log.info(
            "purge by %s: %s %s%s%s", token.name, order.kind, order.host, order.path, " (soft)" if order.soft else ""
        )
        confirmed, failed = 1, []
        peers = (
            []
            if body.get("local") or config.cluster is None
            else [n for n in config.cluster.nodes if n.id != config.cluster.self_id]
        )
        if peers:
            async with aiohttp.ClientSession() as session:
                oks = await asyncio.gather(
                    *(_tell_peer(session, n.admin, body, request.headers["Authorization"]) for n in peers)
                )
            confirmed += sum(oks)
            failed = [n.id for n, ok in zip(peers, oks, strict=True) if not ok]
        answer = {
            "purged": {
                "kind": order.kind,
                "site": order.site.name,
                "host": order.host,
                "path": order.path,
                "soft": order.soft,
            },
            "nodes": 1 + len(peers),
            "confirmed": confirmed,
            "failed": failed,
        }
        return web.json_response(answer)

    return handle
