"""What the admin API's handlers share about a request's body: its JSON, read once the same way by every route,
and the 400 that names what is wrong with it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}) + "\n", content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The body's JSON value; 400 for a body that is not JSON, or is nested deeper than json's decoder recurses
    (a 100 KB body of '[' raised RecursionError, which aiohttp answered 500)."""
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"body is not JSON: {exc.__class__.__name__}") from exc
    except RecursionError:
        raise bad("body is not JSON this node reads: nested too deeply") from None
