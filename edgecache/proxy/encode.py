"""Response heads as the fast path writes them: the one encoder of hits, relayed answers and its own errors.

The fields are aiohttp's, in aiohttp's order, so an answer is the same bytes whichever path wrote it: the given
fields, then Date and the node's Server (proxy.serverfield) when absent, then the Connection field the client's
version and the connection's fate call for (core.keepalive). No Content-Type is added to an answer whose origin
sent none (proxy.exact).
"""

from __future__ import annotations

import http
from collections.abc import Collection, Sequence

from edgecache.core.forward import relayed_named
from edgecache.core.headers import Headers
from edgecache.core.keepalive import KeepAlive
from edgecache.core.status import CacheStatus, cache_status_header
from edgecache.proxy import serverfield
from edgecache.proxy.errorpage import error_page

_EMPTY = frozenset({204, 304})
_LENGTH_FIELDS = frozenset({"content-length", "transfer-encoding"})


def phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def head(
    status: int,
    reason: str,
    fields: list[tuple[str, str]],
    date: bytes,
    keep_alive: KeepAlive,
    charset: str = "latin-1",
    names: Collection[str] | None = None,
) -> bytes | None:
    """The encoded head; None when a field cannot be sent as it is (not in `charset`, or a line break in it).
    `names`: the fields' names in lower case, when the caller has them.

    Relayed fields are Latin-1, byte for byte as the peer sent them; stored and origin ones are UTF-8 as aiohttp's
    client read them, its bytes that were not UTF-8 (obs-text, RFC 9110 5.5) lone surrogates that surrogateescape
    turns back into those bytes (the framework path writes them alike: proxy.exact)."""
    # A list, not a generator: join makes one anyway.
    text = keep_alive.status_line(status, reason) + "".join([f"{k}: {v}\r\n" for k, v in fields])
    if text.count("\n") != len(fields) + 1 or "\r\r" in text:
        return None
    try:
        encoded = text.encode(charset, "surrogateescape" if charset == "utf-8" else "strict")
    except UnicodeEncodeError:
        return None
    if names is None:
        names = {k.lower() for k, _ in fields}
    if "date" not in names:
        encoded += b"Date: " + date + b"\r\n"
    if "server" not in names:
        encoded += serverfield.line
    return encoded + keep_alive.connection + b"\r\n"


def bodiless(status: int, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`fields` as aiohttp's server sends them: without Content-Length or Transfer-Encoding for a status no body may
    follow (204, 304: RFC 9110 8.6, 15.4.5); as they are for any other."""
    if status not in _EMPTY:
        return fields
    return [(k, v) for k, v in fields if k.lower() not in _LENGTH_FIELDS]


def frame(
    fields: list[tuple[str, str]], empty: bool, length: str | None, keep_alive: KeepAlive
) -> tuple[bool, KeepAlive]:
    """Add to a streamed answer's fields what aiohttp's server adds before its head: Transfer-Encoding: chunked when
    a body of unknown length (no Content-Length, `length` None) follows and the client takes chunks. `empty`: no
    body may follow (a HEAD, 1xx, 204, 304). Whether the body is sent chunked, and the connection's state after it
    (an HTTP/1.0 body of unknown length ends with the connection)."""
    chunked, keep_alive = keep_alive.unknown_length() if not empty and length is None else (False, keep_alive)
    if chunked:
        fields.append(("Transfer-Encoding", "chunked"))
    return chunked, keep_alive


def error(status: int, reason: str, date: bytes, keep_alive: KeepAlive, retry_after: int = 0) -> bytes:
    """An answer of the node's own (a failed peer, say), as errorpage.error_response gives it."""
    fields, body = error_page(status, reason, retry_after)
    fields += [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    encoded = head(status, phrase(status), fields, date, keep_alive)
    if encoded is None:  # a reason that cannot be a field value: said in the body only
        fields[0] = ("Cache-Status", cache_status_header(CacheStatus.ERROR))
        encoded = head(status, phrase(status), fields, date, keep_alive)
        assert encoded is not None
    return encoded + body


def timed_out(date: bytes) -> bytes:
    """The 408 for a request head not whole within server.header_timeout, on any listener; the connection closes."""
    return error(408, "request head not received in time", date, KeepAlive.CLOSE)


def relayed(
    status: int,
    reason: str,
    upstream: Headers,
    status_field: str,
    method: str,
    date: bytes,
    keep_alive: KeepAlive,
    charset: str = "latin-1",
) -> tuple[bytes | None, bool, KeepAlive]:
    """An upstream's answer as this node passes it on (a peer's on a forward, an origin's on a pass-through): its
    fields as core.forward.relayed_fields gives them, framed as aiohttp frames a streamed answer (no Content-Length
    where no body may follow). The head (None: a field cannot be passed on as it is), whether the body is sent
    chunked, and the connection's state after it (encode.frame)."""
    out, names = relayed_named(upstream, status_field)
    empty = method == "HEAD" or status in _EMPTY
    if status in _EMPTY and not _LENGTH_FIELDS.isdisjoint(names):
        out = bodiless(status, out)
        names = {k: v for k, v in names.items() if k not in _LENGTH_FIELDS}
    length = names.get("content-length")
    chunked, keep_alive = frame(out, empty, length, keep_alive)
    return head(status, reason, out, date, keep_alive, charset, names), chunked, keep_alive


def age_span(head: bytes, fields: Sequence[tuple[str, str]]) -> tuple[int, int] | None:
    """Where `head`, encoded from `fields`, holds its Age value: (start, end); None if the line is not there exactly
    once, in the head and in the fields."""
    at = head.find(b"\r\nAge: ") + 7
    if at < 7 or head.find(b"\r\nAge: ", at) >= 0 or sum(1 for k, _ in fields if k == "Age") != 1:
        return None
    return at, head.find(b"\r\n", at)
