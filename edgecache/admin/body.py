"""What the admin API's handlers share about a request's body: its JSON, read once the same way by every route,
and the 400 that names what is wrong with it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

# A body that has not all come by then ends its request with 408: a client that announces a length and sends less
# held the request, and a descriptor of the worker that serves viewers too, for good (headers have their own 10 s).
BODY_SECONDS = 30.0


def bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}) + "\n", content_type="application/json")


def unknown_option(names: Any, known: frozenset[str] = frozenset()) -> str | None:
    """The first of `names` (keys of a body or a query) not in `known`, shortened for an answer; None if none is.
    An option the admin API does not take is refused, never ignored: a typo ran a job or a purge on the default."""
    return next((repr(str(name)[:40]) for name in names if name not in known), None)


async def read_json(request: web.Request) -> Any:
    """The body's JSON value; 400 for a body that is not JSON, or is nested deeper than json's decoder recurses
    (a 100 KB body of '[' raised RecursionError, which aiohttp answered 500)."""
    return parse_json(await read_body(request))


def parse_json(raw: bytes) -> Any:
    """read_json's reading of a body already read."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"body is not JSON: {exc.__class__.__name__}") from exc
    except RecursionError:
        raise bad("body is not JSON this node reads: nested too deeply") from None


async def read_body(request: web.Request) -> bytes:
    """The whole body, within BODY_SECONDS; 408 naming the bound otherwise."""
    try:
        async with asyncio.timeout(BODY_SECONDS):
            return await request.read()
    except TimeoutError:
        late = web.HTTPRequestTimeout(
            text=json.dumps({"error": f"the body did not all come within {BODY_SECONDS:g} s"}) + "\n",
            content_type="application/json",
        )
        late.force_close()  # the rest of the body may come yet: never read as the next request
        raise late from None
