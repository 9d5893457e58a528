"""Max-Forwards (RFC 9110 7.6.2): how many more intermediaries an OPTIONS or TRACE may go through. A proxy that
gets one at 0 answers it itself (own_answer); any other it sends on with one less (forward.pass_request). Other
methods ignore the field. Pure."""

from __future__ import annotations

from edgecache.core.headers import Headers, get_first
from edgecache.core.hop import FIELD as HOP

METHODS = frozenset({"OPTIONS", "TRACE"})
# What this node answers of a target itself: the methods it serves from its cache, and OPTIONS.
ALLOW = "GET, HEAD, OPTIONS"
ASTERISK = "*"  # the request target of a server-wide OPTIONS (RFC 9112 3.2.4)
# Not reflected by a TRACE (9.3.8: "excluding some fields"): credentials, and the cluster's signed hop.
_NOT_REFLECTED = frozenset({"authorization", "proxy-authorization", "cookie", HOP.lower()})


def max_forwards(method: str, headers: Headers) -> int | None:
    """The request's Max-Forwards, for OPTIONS and TRACE; None for another method, or when absent or not a
    number (then the request goes on as it came)."""
    if method not in METHODS:
        return None
    value = get_first(headers, "max-forwards")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None


def forwarded(method: str, headers: Headers) -> Headers:
    """The fields an OPTIONS or TRACE goes on with: Max-Forwards one less (any other request's as they are)."""
    left = max_forwards(method, headers)
    if left is None:
        return headers
    less = str(max(0, left - 1))
    return tuple((k, less if k.lower() == "max-forwards" else v) for k, v in headers)


def own_answer(method: str, target: str, version: str, headers: Headers) -> tuple[list[tuple[str, str]], bytes] | None:
    """The answer this node gives itself, its fields (besides Cache-Status) and body: to an OPTIONS or TRACE whose
    Max-Forwards is 0, and to any `OPTIONS *`. OPTIONS: what it allows; TRACE: the request as received, as
    message/http. None for any other request. `OPTIONS *` asks about the server in general (9.3.7), which for a
    viewer is this node: it is never sent on (nor could it be: a fill's target is a key's origin-form path)."""
    if method == "OPTIONS" and target == ASTERISK:
        return [("Allow", ALLOW)], b""
    if max_forwards(method, headers) != 0:
        return None
    if method == "OPTIONS":
        return [("Allow", ALLOW)], b""
    lines = [f"{method} {target} HTTP/{version}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _NOT_REFLECTED)
    return [("Content-Type", "message/http")], ("".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
