"""The answer to a request head aiohttp's parser refuses (a target that is neither a path nor a URL, such as `*` for
another method than OPTIONS, a line too long, a bad field): 400 with a reason of ours. aiohttp's own answer carried
its parser's message, which quotes the client's bytes (the whole target of `GET *<script>`, the request line of
`GET foo` with a caret under it): client input echoed back, unlike every other refusal of the node."""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

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


class Handler(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) and 400 <= status < 500 and exc.message != TLS_ON_PLAIN:
            message = f"{reason(exc)}\n"
        return super().handle_error(request, status, exc, message)


def handler_of(server: web.Server) -> RequestHandler:
    """A connection's protocol for `server` (what calling it makes), answering an unparsable head with a reason."""
    return Handler(server, loop=server._loop, **server._kwargs)


class Server(web.Server):
    """aiohttp's low-level server whose connections answer an unparsable head with Handler's reasons."""

    def __call__(self) -> RequestHandler:
        return handler_of(self)
