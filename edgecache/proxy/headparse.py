"""Request heads parsed as aiohttp's server parses them: its own parser, with the limits it applies, so the fast
path takes exactly the heads the full path takes (decide)."""

from __future__ import annotations

import asyncio
import inspect

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from edgecache.core import admit
from edgecache.core.headers import Headers

# aiohttp's server (make_server sets none of these) parses with RequestHandler's defaults: read them, not copied.
LIMITS = {
    name: inspect.signature(RequestHandler.__init__).parameters[name].default
    for name in ("max_line_size", "max_headers", "max_field_size")
}
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})
_CONNECTION = frozenset({b"keep-alive", b"close"})


class Parser:
    """aiohttp's request parser, used head by head; a new one after any head that did not end cleanly."""

    def __init__(self) -> None:
        self._parser: HttpRequestParser | None = None

    def message(self, head: bytes) -> RawRequestMessage | None:
        """The head's message if aiohttp accepts it as one complete request without a body; None otherwise."""
        parser = self._parser
        if parser is None:
            loop = asyncio.get_running_loop()
            parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, **LIMITS)
        self._parser = None
        try:
            messages, upgraded, tail = parser.feed_data(head)
        except HttpProcessingError:
            return None
        if len(messages) != 1 or upgraded or tail:
            return None
        message, payload = messages[0]
        if not payload.is_eof() or message.upgrade or message.chunked:
            return None
        if not message.should_close:  # llhttp takes nothing after a closing message
            self._parser = parser  # it ended cleanly: ready for the next head
        return message


def plain(msg: RawRequestMessage) -> bool:
    """A GET or HEAD of a version core.keepalive frames, with no field that frames a body or asks for more than
    one answer: what the fast path answers. Any other is aiohttp's to answer (or refused: route.unversioned)."""
    if admit.version(*msg.version) is not None or msg.method not in ("GET", "HEAD"):
        return False
    return not any(_odd(k, v) for k, v in msg.raw_headers)


def _odd(name: bytes, value: bytes) -> bool:
    lower = name.lower()
    return lower in _FRAMING or (lower == b"connection" and value.strip().lower() not in _CONNECTION)


def fields(msg: RawRequestMessage) -> Headers | None:
    """The head's fields, names in ASCII (None if one is not) and values' bytes past ASCII (obs-text: a User-Agent,
    a Referer) decoded as aiohttp decodes them."""
    try:
        return tuple((k.decode("ascii"), v.decode("utf-8", "surrogateescape")) for k, v in msg.raw_headers)
    except UnicodeError:
        return None
