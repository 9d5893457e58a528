"""POST /purge: one URL (every variant and slice), a directory prefix, or a whole site; hard or soft; applied on
this node and on every peer (the configured nodes, or those DNS lists), answering how many nodes took it and which
did not. A node that did not catches up later (cluster.purgesync): each purge is numbered here (core.purge.Entry)
and passed on with its number, signed with the token derived from the cluster key (core.purge.peer_token,
core.nodeauth: the token itself is never sent), so it is applied once wherever it arrives first. A client's
purge never carries a number.

POST /purges/after: the purges a peer lacks, given what it has (its vector); cluster.purgesync asks it signed
with the nodes' token too. That token acts on no site otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from edgecache.admin.auth import authorize, token_of, unknown
from edgecache.admin.body import bad, read_json, unknown_option
from edgecache.cluster.purgesync import AFTER_PATH, PURGE_PATH, apply_entry
from edgecache.cluster.view import ClusterView
from edgecache.config import Config, Site, Token
from edgecache.config.values import parse_listen
from edgecache.core import nodeauth, nodeid
from edgecache.core.purge import Entry, TableFull, parse_retired, parse_vector, peer_token
from edgecache.core.ring import Member
from edgecache.core.route import Router
from edgecache.core.siteurl import NotSiteURL, site_url
from edgecache.storage.purging import UNKEPT
from edgecache.storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeOrder:
    site: Site
    kind: str  # "url" | "prefix" | "site"
    host: str = ""
    path: str = ""  # the normalised target (url) or directory (prefix)
    soft: bool = False


_KEYS = frozenset({"url", "prefix", "site", "soft", "local", "id"})  # local and id: the cluster's nodes' own


def parse_order(body: Any, sites: tuple[Site, ...], token: Token) -> PurgeOrder:
    """The purge `body` asks for; a host or site name no site has is refused as another provider's (auth.unknown)
    unless `token` is an operator's."""
    if not isinstance(body, dict):
        raise bad("expected a JSON object with one of url, prefix or site")
    # A key it does not take is refused, never ignored: a typo of `soft` made a hard purge, answered as done.
    if (extra := unknown_option(body, _KEYS)) is not None:
        raise bad(f"unknown key {extra}: a purge takes url, prefix or site, and soft")
    if not isinstance(body.get("local", False), bool):
        raise bad("local must be true or false")
    kinds = [k for k in ("url", "prefix", "site") if k in body]
    if len(kinds) != 1:
        raise bad("give exactly one of url, prefix or site")
    soft = body.get("soft", False)
    if not isinstance(soft, bool):
        raise bad("soft must be true or false")
    kind = kinds[0]
    value = body[kind]
    if kind == "site":
        site = next((s for s in sites if isinstance(value, str) and s.name == value), None)
        if site is None:
            unknown(token)
            raise bad(f"no site named {value!r}")
        return PurgeOrder(site, "site", soft=soft)
    try:
        url = site_url(value, Router((s.hosts, s) for s in sites))
    except NotSiteURL as exc:
        if exc.unknown_host:
            unknown(token)
        raise bad(f"{kind}: {exc}") from exc
    if kind == "prefix":
        if url.query or not url.key.path.endswith("/"):
            raise bad("a prefix is a directory: it ends with '/' and has no query")
        return PurgeOrder(url.site, "prefix", url.host, url.key.path, soft)
    return PurgeOrder(url.site, "url", url.host, url.key.target, soft)


def _authorize(token: Token, site: str, body: dict[str, Any]) -> None:
    """A purge a node passes on (the nodes' token, with the number the first node gave it) is applied whatever
    its site; a client's never carries a number nor asks to stay on this node: a number taken here as done drops
    the real purge that comes with it later, and another provider's purge goes unapplied."""
    if token.role == "peer" and "id" in body:
        return
    if "id" in body or body.get("local"):
        raise bad("id and local are the cluster's nodes' own")
    authorize(token, site)


def _entry(store: Store, config: Config, order: PurgeOrder, body: dict[str, Any]) -> Entry:
    """The purge's identity: the one a peer that took it first sent ("id"), else a new one of this node's."""
    host, path = order.host, order.path
    given = body.get("id")
    if config.cluster is None:
        return Entry("", 0, order.kind, order.site.name, host, path, order.soft)  # not numbered: no peers
    if given is None:
        return store.issue(config.cluster.self_id, order.kind, order.site.name, host, path, order.soft)
    entry = None
    if isinstance(given, list) and len(given) == 2:
        entry = Entry.from_json([*given, order.kind, order.site.name, host, path, order.soft])
    if entry is None:
        raise bad("id must be [origin, number] as a node sends it")
    return entry


async def _tell_peer(session: aiohttp.ClientSession, admin: str | None, body: bytes, auth: str, seconds: float) -> bool:
    if admin is None:
        return False  # a peer without an admin listener cannot be told (never its client port: that is an origin's)
    try:
        async with session.post(
            f"http://{admin}{PURGE_PATH}",
            data=body,
            headers={"Authorization": auth, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as r:
            return r.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def _pass_on(config: Config, peers: list[Member], view: ClusterView | None, told: dict[str, Any]) -> list[str]:
    """Tell every peer of the purge, under the nodes' token; the ids of those that did not confirm it. A peer the
    health checks see down whose last check failed too is not waited for, and none longer than cluster.timeout:
    each takes the purge from a peer's purge log once it answers again (cluster.purgesync), so waiting would only
    keep the operator waiting. One seen down whose last check answered, or that asked this node's purge log since
    its last failed check (ClusterView.heard_from), is told: a node that restarted caught up before it listened,
    and serves its cache while its peers still see it down; not told, it served the bytes a purge made then removed
    until its own next round (tests/e2e/test_purge_rejoin.py)."""
    if not peers:
        return []
    assert config.cluster is not None  # peers: a cluster
    body = json.dumps({**told, "local": True}).encode()
    auth = nodeauth.authorization(peer_token(config.cluster.key), "POST", PURGE_PATH, body, time.time())
    asked = [n for n in peers if view is None or view.is_up(n.id) or view.answers(n.id)]
    async with aiohttp.ClientSession() as session:
        telling = (_tell_peer(session, n.admin, body, auth, config.cluster.timeout) for n in asked)
        oks = dict(zip((n.id for n in asked), await asyncio.gather(*telling), strict=True))
    return [n.id for n in peers if not oks.get(n.id, False)]


def _applied_by(view: ClusterView, entry: Entry, passed_on: bool, confirmed: list[str]) -> None:
    """Tell the view which peers have applied the purge: those that confirmed it, and the node that numbered a
    purge passed on here (it applied it before it told anyone). Requests for what it covers are relayed to them
    at once (cluster.behind), not only after their purge logs next answer."""
    if passed_on:
        confirmed = [*confirmed, entry.origin.rpartition("~")[0]]
    for peer in confirmed:
        if peer != view.self_id and peer in view.health:  # an outsider (_peers) is never forwarded to: not kept
            view.peer_applied(peer, entry.origin, entry.seq)


def _peers(config: Config, view: ClusterView | None) -> list[Member]:
    """Every other node: those the view has (from the config or from DNS), else the configured ones; and the nodes
    that are no members here but ask this node's purge log (ClusterView.outsiders: one just added or retired)."""
    if config.cluster is None:
        return []
    members = view.ring.members if view is not None else config.cluster.nodes
    outsiders = view.outsiders() if view is not None else []
    return [m for m in (*members, *outsiders) if m.id != config.cluster.self_id]


async def _apply(store: Store, config: Config, entry: Entry, strict: bool) -> list[str]:
    """Apply the purge here; what of it the disk could not record (storage.purging). 429 when the purge table is
    full: only for a purge a client sent (`strict`); one another node took and numbered is always applied."""
    unkept: list[str] = []
    recording = UNKEPT.set(unkept)
    try:
        numbered = config.cluster is not None
        await apply_entry(store, config.sites, entry, time.time(), strict=strict, numbered=numbered)
    except TableFull as exc:
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": str(exc)}) + "\n", content_type="application/json"
        ) from exc
    finally:
        UNKEPT.reset(recording)
    return unkept


def purge_handler(current: Callable[[], Config], store: Store, view: ClusterView | None = None) -> Any:
    """`current` gives the running config, so a reload (SIGHUP) changes tokens and sites at once; `view` the
    members (with DNS membership, the config names none)."""

    async def handle(request: web.Request) -> web.Response:
        config = current()
        token: Token = token_of(request)
        body = await read_json(request)
        # Nothing in the query is read: `?soft=true` beside a JSON body made a hard purge, answered as done.
        if (extra := unknown_option(request.query)) is not None:
            raise bad(f"unknown parameter {extra}: a purge takes url, prefix or site, and soft in its body")
        order = parse_order(body, config.sites, token)
        _authorize(token, order.site.name, body)
        entry = _entry(store, config, order, body)
        unkept = await _apply(store, config, entry, strict="id" not in body)
        log.info(
            "purge by %s: %s %s%s%s (%s #%d)",
            token.name,
            order.kind,
            order.host,
            order.path,
            " (soft)" if order.soft else "",
            entry.origin,
            entry.seq,
        )
        kept = not unkept  # the disk recorded it: it survives a restart
        peers = [] if body.get("local") else _peers(config, view)
        failed = await _pass_on(config, peers, view, {**body, "local": True, "id": [entry.origin, entry.seq]})
        if view is not None:
            for gone in failed:  # an outsider that did not take it is told no more until it asks again
                view.forget(gone)
        if view is not None and entry.seq:
            _applied_by(view, entry, "id" in body, [p.id for p in peers if p.id not in failed])
        if not kept:
            failed.insert(0, config.cluster.self_id if config.cluster else "this node")
        answer = {
            "purged": {
                "kind": order.kind,
                "site": order.site.name,
                "host": order.host,
                "path": order.path,
                "soft": order.soft,
            },
            "nodes": 1 + len(peers),
            "confirmed": 1 + len(peers) - len(failed),
            "failed": failed,
        }
        if entry.seq:  # numbered: this node has peers (core.purge.Entry)
            answer["id"] = [entry.origin, entry.seq]
        if not kept:
            lost = " or ".join(unkept)
            answer["error"] = f"applied here, but this node's disk could not record {lost}: it holds until a restart"
        return web.json_response(answer, status=200 if kept else 503)

    return handle


def admin_tokens(config: Config) -> tuple[Token, ...]:
    """The tokens the admin API takes: the configured ones, and in a cluster the nodes' own (core.purge.peer_token),
    which POST /purges/after and a numbered POST /purge honour (role "peer": it acts on no site otherwise)."""
    if config.cluster is None or not config.cluster.key:
        return config.tokens
    keys = (config.cluster.key, *config.cluster.accepted)  # a peer may present either while the key is changed
    return (*config.tokens, *(Token("cluster", peer_token(k), "peer") for k in keys))


def _admin_of(value: object) -> str | None:
    """The admin address an asking node gives (HOST:PORT, as a URL takes it), or None: not given, or not one."""
    try:
        listen = parse_listen(value)
    except ValueError:
        return None
    return None if listen.host in ("0.0.0.0", "::") else nodeid.canonical(str(listen))  # not where it listens


def purge_routes(current: Callable[[], Config], store: Store, view: ClusterView | None = None) -> list[web.RouteDef]:
    """POST /purges/after {"vector": {origin: number}}: the entries the asker lacks (core.purge.SyncLog.after),
    for the nodes' token (role "peer") or an operator's; a provider's would see other providers' URLs."""

    async def after(request: web.Request) -> web.Response:
        token: Token = token_of(request)
        if token.role not in ("peer", "operator"):
            raise web.HTTPForbidden(
                text='{"error": "only the cluster\'s nodes and operators may read the purge log"}\n',
                content_type="application/json",
            )
        body = await read_json(request)
        vector = parse_vector(body.get("vector")) if isinstance(body, dict) else None
        retired = parse_retired(body.get("retired")) if isinstance(body, dict) else None
        if vector is None or retired is None:
            raise bad('expected {"vector": {origin: number, ...}, "retired": [origin, ...]}')
        asker = body.get("node")
        if view is not None and token.role == "peer" and isinstance(asker, str):
            view.asked(asker, _admin_of(body.get("admin")))  # it takes purges passed on to it (_pass_on)
        answer = store.sync.after(vector, retired=retired, now=time.time(), horizon=store.horizon)
        config = current()
        return web.json_response(
            {
                "node": config.cluster.self_id if config.cluster is not None else "",
                "vector": dict(answer.vector),
                "entries": [e.to_json() for e in answer.entries],
                "more": answer.more,
                "gap": answer.gap,
                "me": answer.me,
                "retired": {o: [r.top, r.at] for o, r in answer.retired.items()},
            }
        )

    return [web.post(AFTER_PATH, after)]
