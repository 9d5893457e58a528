"""One call to a node's admin API from the command line (edgecache purge, ring, prefetch): its JSON answer, or
why none came, never a traceback."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from edgecache import config as cfg

UNREACHABLE = "cannot reach the admin listener"


def admin_call(
    config: cfg.Config, token: str, method: str, path: str, body: object = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """(status, JSON answer) of one admin call; status 0 with an error when the listener cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if data else {})}
    request = urllib.request.Request(f"http://{config.admin}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw, reason = resp.status, resp.read(), resp.reason
    except urllib.error.HTTPError as exc:
        status, raw, reason = exc.code, exc.read(), exc.reason
    except (OSError, http.client.HTTPException) as exc:  # HTTPException: what answers there does not speak HTTP
        return 0, {"error": f"{UNREACHABLE} {config.admin}: {exc!r}"}
    return _answer_of(config, status, raw, reason)


def _answer_of(config: cfg.Config, status: int, raw: bytes, reason: str) -> tuple[int, Any]:
    """(status, the admin API's JSON answer); for anything else (another server at that address, a proxy's error
    page), status 0 and an error saying what came instead."""
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:  # UnicodeDecodeError is one
        text = raw.decode("utf-8", "replace").strip()[:200] or reason
        return 0, {"error": f"{config.admin} answered {status}, not the admin API's JSON: {text!r}"}
