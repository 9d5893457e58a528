"""The answer to a request head aiohttp's parser refuses (a target that is neither a path nor a URL, such as `*` for
another method than OPTIONS, a line too long, a bad field): 400 with a reason of ours. aiohttp's own answer carried
its parser's message, which quotes the client's bytes (the whole target of `GET *<script>`, the request line of
`GET foo` with a caret under it): client input echoed back, unlike every other refusal of the node.

The fast path writes the same answer itself (refusal), so a malformed head is never handed to aiohttp for it.
The server is the client listener's, so its requests are serverfield's: its answers carry the node's Server field.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from edgecache import metrics
from edgecache.core.keepalive import KeepAlive
from edgecache.proxy import encode, headparse, linger, serverfield

if TYPE_CHECKING:
    from edgecache.proxy.fastpath import FastPath

_ANSWERED = metrics.FAST_PATH.labels("answered")

# The first class an error is an instance of names its reason (BadHttpMethod before BadStatusLine, its base).
_REASONS: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (InvalidURLError, "invalid request target: an absolute path, an absolute URL, or * for OPTIONS only"),
    (LineTooLong, "request line or header field too long"),
    (InvalidHeader, "invalid header field"),
    (BadHttpMethod, "invalid method"),
    (BadStatusLine, "invalid request line"),
)


# aiohttp's reason for a TLS ClientHello on a plain port (its method's first bytes): it quotes nothing, and says
# what went wrong better than "invalid method" would.
TLS_ON_PLAIN = "Received HTTPS traffic on an HTTP port"


def reason(exc: HttpProcessingError) -> str:
    return next((text for kind, text in _REASONS if isinstance(exc, kind)), "malformed request")


def said(exc: HttpProcessingError) -> str:
    """The body of the 400 for a head aiohttp's parser refused with `exc`: our reason, or aiohttp's TLS_ON_PLAIN."""
    return exc.message if exc.message == TLS_ON_PLAIN else f"{reason(exc)}\n"


def refusal(data: bytes, date: bytes) -> bytes | None:
    """The answer aiohttp's server writes when its parser refuses `data`, the start of a request: Handler's 400
    (aiohttp answers every parse error with 400, in HTTP/1.0 as it knows no version of the request, and closes);
    None when the parser takes the bytes (a head not ended yet, a request it parses, with or without a body)."""
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, **headparse.LIMITS)
    try:
        parser.feed_data(data)
    except HttpProcessingError as exc:
        body = said(exc).encode()
        fields = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        encoded = encode.head(400, encode.phrase(400), fields, date, KeepAlive.CLOSE_10)
        assert encoded is not None  # fields of ours: nothing in them to refuse
        return encoded + body
    return None


def answered(conn: FastPath, data: bytes) -> bool:
    """Answer on the fast path, as aiohttp would (refusal), the bytes at the front of `conn` if aiohttp's parser
    refuses them, and close; False when it takes them (the connection is aiohttp's to answer then)."""
    answer = refusal(data, conn.server.date())
    if answer is None or conn.transport is None:
        return False
    conn.buf = b""
    conn.transport.write(answer)
    _ANSWERED.inc()
    linger.close(conn)
    return True


class Handler(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500:
            message = said(exc)
        return super().handle_error(request, status, exc, message)


def handler_of(server: web.Server) -> RequestHandler:
    """A connection's protocol for `server` (what calling it makes), answering an unparsable head with a reason."""
    return Handler(server, loop=server._loop, **server._kwargs)


class Server(web.Server):
    """aiohttp's low-level server whose connections answer an unparsable head with Handler's reasons, and whose
    answers carry the node's Server field (serverfield.Request)."""

    def __call__(self) -> RequestHandler:
        return handler_of(self)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> BaseRequest:
        return serverfield.Request(message, payload, protocol, writer, task, self._loop)
