"""Bearer tokens for the admin API: 401 without a valid one, 403 for another provider's site.

Every configured secret is compared, in constant time, so neither the answer nor its timing says which token
came close. Tokens are never logged; their names are.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from edgecache.config import Token


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
    given = presented.strip().encode()
    for token in tokens:
        if hmac.compare_digest(given, token.secret.encode()) and found is None:
            found = token
    if found is None:
        raise web.HTTPUnauthorized(
            text='{"error": "invalid token"}\n',
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="edgecache", error="invalid_token"'},
        )
    return found


def authorize(token: Token, site: str) -> None:
    if not token.may_act_on(site):
        raise web.HTTPForbidden(
            text=f'{{"error": "token {token.name!r} may not act on site {site!r}"}}\n', content_type="application/json"
        )
