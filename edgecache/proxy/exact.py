"""aiohttp's responses, writing an origin's head as it came: no Content-Type it did not send, and a field value's
obs-text as its bytes.

aiohttp's server gives a body without a type `Content-Type: application/octet-stream`. A cache passes the origin's
representation metadata (RFC 9110 7.7: a proxy SHOULD NOT modify fields that describe the selected
representation), and a type left out leaves the recipient free to sniff one (8.3) where octet-stream makes a browser
download: nginx's proxy_cache, Varnish and Traffic Server add none. The fast path adds none either (proxy.encode).

aiohttp's client reads a field's bytes that are not UTF-8 (obs-text, legal in a value: RFC 9110 5.5) as lone
surrogates (surrogateescape), and its server's writer drops them: `filename="t\\xe9st.mp4"` went out as
`filename="tst.mp4"`. These classes write such a head as encode.head does (surrogateescape); a head without them
is aiohttp's own bytes. They read private attributes of aiohttp's StreamResponse and StreamWriter (pinned below
3.15): if a version renames them, the head is aiohttp's again and tests/e2e/test_obs_text.py fails.
"""

from __future__ import annotations

import re

from aiohttp import hdrs, web
from aiohttp.http_writer import StreamWriter
from multidict import CIMultiDict

# aiohttp's own refusal (http_writer._FORBIDDEN_HEADER_CHARS_RE): no control character but HTAB in a head.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ExactStreamResponse(web.StreamResponse):
    async def _prepare_headers(self) -> None:
        typed = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not typed:
            self._headers.popall(hdrs.CONTENT_TYPE, None)

    async def _write_headers(self) -> None:
        writer, request = self._payload_writer, self._req
        if request is None or not isinstance(writer, StreamWriter) or not hasattr(writer, "_headers_buf"):
            await super()._write_headers()
            return
        line = f"HTTP/{request.version[0]}.{request.version[1]} {self._status} {self._reason}"
        exact = _encoded(line, self._headers)
        if exact is None:
            await super()._write_headers()
            return
        await writer.write_headers(line, self._headers)  # its hook, and its state: a head to send
        writer._headers_buf = exact
        if self._send_headers_immediately:
            writer.send_headers()


def _encoded(line: str, fields: CIMultiDict[str]) -> bytes | None:
    """The head's bytes, when a value has obs-text; None when aiohttp writes the same bytes (or the text has a
    surrogate that stands for no byte: aiohttp drops it). Raises ValueError as aiohttp's writer does, for a control
    character."""
    if all(v.isascii() for v in fields.values()):
        return None
    lines = [line, *(f"{k}: {v}" for k, v in fields.items())]
    if any(_FORBIDDEN.search(text) for text in lines):
        raise ValueError("Forbidden control character detected in headers")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


class ExactResponse(ExactStreamResponse, web.Response):
    """web.Response (a body known whole), its head written as ExactStreamResponse's."""
