"""Bearer tokens for the admin API: 401 without a valid one, 403 for another provider's site.

Every route needs a token except PUBLIC, which load balancers and Prometheus reach without one; the check is
a middleware, so a route added later is covered without a line of its own. Every configured secret is
compared, in constant time, so neither the answer nor its timing says which token came close. Tokens are never
logged; their names are. The nodes' own tokens (role "peer") are never presented: a node signs each request
with one (core.nodeauth), and a bearer that presents one is refused.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from edgecache.admin.body import read_body
from edgecache.config import Token
from edgecache.core import nodeauth

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})
TOKEN = web.RequestKey("token", Token)


def authenticate(request: web.Request, tokens: tuple[Token, ...]) -> Token:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise web.HTTPUnauthorized(
            text='{"error": "a bearer token is required"}\n',
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="edgecache"'},
        )
    found: Token | None = None
    # The header's bytes came in as UTF-8 with surrogate escapes: any bytes encode back, none raise.
    given = presented.strip().encode("utf-8", "surrogateescape")
    for token in tokens:
        if hmac.compare_digest(given, token.secret.encode()) and found is None and token.role != "peer":
            found = token
    if found is None:
        raise _invalid()
    return found


async def authenticate_node(request: web.Request, tokens: tuple[Token, ...], credentials: str) -> Token:
    """The nodes' token whose signature the request carries (core.nodeauth), over its method, path and body (read
    here, within the body's bound, only for credentials that may be a node's; the handler reads the same bytes
    again)."""
    if not nodeauth.may_be_signed(credentials, time.time()):
        raise _invalid()
    body = await read_body(request)
    now = time.time()
    for token in tokens:
        if token.role == "peer" and nodeauth.verified(
            token.secret, credentials, request.method, request.raw_path, body, now
        ):
            return token
    raise _invalid()


def _invalid() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text='{"error": "invalid token"}\n',
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="edgecache", error="invalid_token"'},
    )


def guard(tokens: Callable[[], tuple[Token, ...]]) -> Middleware:
    """Every request but those for PUBLIC routes is authenticated before its handler runs (unknown paths too)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or resource.canonical not in PUBLIC:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == nodeauth.SCHEME.lower():
                request[TOKEN] = await authenticate_node(request, tokens(), credentials)
            else:
                request[TOKEN] = authenticate(request, tokens())
        return await handler(request)

    return check


def token_of(request: web.Request) -> Token:
    """The token guard() found for this request."""
    return request[TOKEN]


def authorize(token: Token, site: str) -> None:
    if not token.may_act_on(site):
        raise forbidden(token)


def forbidden(token: Token) -> web.HTTPForbidden:
    """The 403 of a site the token may not act on, naming neither the site nor whether it exists: another
    provider's host and a host no site has look the same (unknown()), or a provider could list them."""
    error = json.dumps({"error": f"token {token.name!r} may act on its own sites only"})
    return web.HTTPForbidden(text=error + "\n", content_type="application/json")


def unknown(token: Token) -> None:
    """A host or site name no site has: for a provider's token, the 403 of another provider's (forbidden); an
    operator's goes on to learn that none has it, as do the nodes' own (a purge a peer passes on)."""
    if token.role not in ("operator", "peer"):
        raise forbidden(token)
