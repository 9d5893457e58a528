"""The Server field of the node's answers: the origin's when it sent one, else `server.server_field` ("edgecache"
by default; "" adds none), whichever path writes the answer.

aiohttp's server adds `Server: Python/3.11 aiohttp/3.14.5` (its SERVER_SOFTWARE) to every answer without one, and
the fast path copied it to stay byte for byte the same: every answer of the node, its own errors, 304s and the
admin listener's included, told the interpreter's and aiohttp's versions to anyone, which the version-disclosure
checks of security scanners flag (nginx has `server_tokens off` for it). This module holds the field the node
adds: the fast path's encoder appends `line` (proxy.encode.head), and aiohttp's answers, the client listener's
(Request) and the admin listener's and demo origin's (AppRequest), are settled before their heads are written.

One value per process, as aiohttp's own was: a worker runs one node, whose server.open_node sets it (a restart
changes it: the fast path remembers heads made with it).
"""

from __future__ import annotations

import functools

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from edgecache.config.model import SERVER_FIELD


def _line(value: str) -> bytes:
    return f"Server: {value}\r\n".encode() if value else b""


value = SERVER_FIELD
line = _line(SERVER_FIELD)  # what proxy.encode.head appends to a head without a Server field


def use(field: str) -> str:
    """Make `field` the Server the node adds (config.server_field, checked there); the one it replaces."""
    global value, line
    before, value, line = value, field, _line(field)
    return before


def settle(headers: CIMultiDict[str]) -> None:
    """An aiohttp answer's fields, once aiohttp has prepared them: its own Server, which it sets (the very object
    SERVER_SOFTWARE) where the answer had none, replaced by ours, or dropped; an origin's (any other) kept."""
    if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
        if value:
            headers[hdrs.SERVER] = value
        else:
            del headers[hdrs.SERVER]


class Request(web.BaseRequest):
    """The client listener's requests (proxy.badhead.Server): each answer is settled between aiohttp's preparing of
    its fields and the writing of its head."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        settle(response.headers)


class AppRequest(web.Request):
    """An application's requests (the admin listener's, the demo origin's), settled alike. Its on_response_prepare
    would miss the answers aiohttp makes before routing, to a head its parser refuses."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await super()._prepare_hook(response)
        settle(response.headers)


def follow(runner: web.AppRunner) -> None:
    """Have `runner`'s application make AppRequests, once it is set up (its server is made then): the connections
    its listeners accept from then on take their requests' factory from the server."""
    assert runner.server is not None
    runner.server.request_factory = functools.partial(runner.app._make_request, _cls=AppRequest)
