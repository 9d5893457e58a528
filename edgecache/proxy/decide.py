"""Deciding, from a request head's bytes alone, whether the fast path answers it: the memo of decisions, the
whole-object answers single ranges are cut from, and the parse behind both (see fastpath).

A head is parsed by aiohttp's own request parser, with the limits aiohttp's server applies, so the fast path
refuses (hands to aiohttp, which answers 400) exactly the heads the full path refuses: too many fields, over-long
lines or fields, odd bytes, repeated fields that must occur once, version strings. No copy of those rules lives
here; loadtest/fuzz_heads.py and tests/e2e/test_fast_path_differential.py check the two paths agree.

A head is parsed and looked up (find_hit) once; the same head bytes then get the same answer while everything it
was decided from is unchanged (Hit.still). Nothing here does I/O or waits: a decision that needs the disk tier
comes back as a Load for the connection to fetch first.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from edgecache import metrics
from edgecache.core import ranges
from edgecache.core.status import CacheStatus
from edgecache.proxy import observe, rangecut
from edgecache.proxy.handler import EdgeHandler
from edgecache.proxy.hit import MAX_SLICES, Hit, Load, find_hit, renewed
from edgecache.storage.store import slice_name

log = logging.getLogger(__name__)

# aiohttp's server (make_server sets none of these) parses with RequestHandler's defaults: read them, not copied.
_LIMITS = {
    name: inspect.signature(RequestHandler.__init__).parameters[name].default
    for name in ("max_line_size", "max_headers", "max_field_size")
}
_MEMO_HEAD = 2048  # request heads longer than this are not memoised
_MEMO_ENTRIES = 4096  # decisions remembered; a full memo is cleared and filled again
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})
_CONNECTION = frozenset({b"keep-alive", b"close"})


class _FullParse:
    """_ranged() cannot cut this head's answer from a whole one: parse it in full."""


_FULL_PARSE = _FullParse()


@dataclass(slots=True)
class Prepared:
    """A hit's answer, ready to send: the decision, its encoded head, and its request counter."""

    hit: Hit
    method: str
    keep_alive: bool
    head: bytes
    counter: Any
    slices: tuple[tuple[str, int, int], ...]  # (slice name, first byte, end) of the body, in order
    site_bytes: Any  # the served-bytes-by-site counter's child for its site
    range_field: str | None = None  # the Range of a request answered from its whole-object answer, for the log


class _Parser:
    """aiohttp's request parser, used head by head; a new one after any head that did not end cleanly."""

    def __init__(self) -> None:
        self._parser: HttpRequestParser | None = None

    def message(self, head: bytes) -> RawRequestMessage | None:
        """The head's message if aiohttp accepts it as one complete request without a body; None otherwise."""
        parser = self._parser
        if parser is None:
            loop = asyncio.get_running_loop()
            parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16, **_LIMITS)
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


def _odd(name: bytes, value: bytes) -> bool:
    lower = name.lower()
    return lower in _FRAMING or (lower == b"connection" and value.strip().lower() not in _CONNECTION)


class Decider:
    """The decisions of one worker's fast path, shared by its connections."""

    def __init__(self, handler: EdgeHandler, date: Callable[[], bytes]) -> None:
        self.handler = handler
        self.date = date  # the Date field's value now
        self.memo: dict[bytes, Prepared] = {}  # request head -> its answer, while still valid
        self.wholes: dict[bytes, Prepared] = {}  # head without Range -> whole-object basis
        self.parser = _Parser()

    def answer(self, head: bytes, client: str) -> Prepared | Load | None:
        """The answer to this head if it is a fresh hit; None for anything the fast path leaves to aiohttp.

        The same head bytes ask the same question, so a hit decided moments ago is reused while everything it
        was decided from is unchanged (Hit.still); only the client's address is checked again.
        """
        handler = self.handler
        if handler.in_flight >= handler.max_in_flight:
            return None
        now = time.time()
        prepared = self._current(self.memo, head, now)
        if prepared is not None and prepared.hit.admits(client, now):
            limiter = handler.limiter
            if limiter is not None and not limiter.allow(client, time.monotonic()):
                return None
            handler.engine.store.touch_meta(prepared.hit.req.entry_key, prepared.hit.req.primary)
            return prepared
        ranged = self._ranged(head, client)
        return self._decide(head, client) if isinstance(ranged, _FullParse) else ranged

    def _current(self, memo: dict[bytes, Prepared], head: bytes, now: float) -> Prepared | None:
        """The remembered answer to this head, brought up to date if only its Age ticked (hit.renewed)."""
        prepared = memo.get(head)
        if prepared is None or prepared.hit.still(self.handler, now):
            return prepared
        hit = renewed(prepared.hit, self.handler, now)
        encoded = _with_age(prepared.head, prepared.hit, hit) if hit is not None else None
        if hit is None or encoded is None:
            del memo[head]
            return None
        prepared = replace(prepared, hit=hit, head=encoded)
        memo[head] = prepared
        return prepared

    def _decide(self, head: bytes, client: str, basis: bool = False) -> Prepared | Load | None:
        """Parse and look up the head from scratch; remember a hit's answer for the same head.

        A `basis` is the whole-object answer single ranges are cut from: any size, kept apart from the memo
        (a plain request for the whole object must still meet MAX_SLICES), and never sent itself.
        """
        handler = self.handler
        memo = self.wholes if basis else self.memo
        hit, method, keep_alive = self._parse(head, client, basis)
        if hit is None or isinstance(hit, Load):
            return hit
        encoded = self._head(hit, keep_alive)
        if encoded is None:
            return None
        counter = observe.requests_counter(hit.site.name, method, hit.status, CacheStatus.HIT)
        slices = () if basis else _slices(hit, handler.engine.slice_size)
        prepared = Prepared(hit, method, keep_alive, encoded, counter, slices, _site_bytes(hit))
        # A hop's head is not remembered: it is worthless after its time window, and no two are the same.
        if hit.viewer is None and len(head) <= _MEMO_HEAD and any(k.lower() == "date" for k, _ in hit.headers):
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            memo[head] = prepared
        return prepared

    def _ranged(self, head: bytes, client: str) -> Prepared | Load | _FullParse | None:
        """A single-range GET answered from the answer to the same head without its Range line.

        Players ask for a different range of the same object on every request, so their heads never repeat and
        the memo alone would parse each one. The head without its Range line does repeat: its answer (a 200 for
        the whole object, decided by the full parse, with every condition already passed) is memoised, and the
        206 is cut from it: same fields, then Content-Range and Content-Length, exactly as _planned() orders
        them. Anything else (If-Range, several Range lines, a multipart or unsatisfiable range, a stored
        response that is not a whole 200, a rate-limited site) gives _FULL_PARSE. When the head without Range
        is no hit, neither is the head (Range changes nothing before _planned): None, and aiohttp answers it.
        """
        split = rangecut.split_range(head)
        if split is None or not rangecut.plain_value(split[0]):
            return _FULL_PARSE
        # The Range line counts against aiohttp's limits too: the number of fields (one per line: split_range
        # made sure), and in a long head a field's size, which aiohttp sums oddly across neighbouring fields.
        # Such heads get the full parse, whose parser (aiohttp's) decides them.
        if head.count(b"\r\n") - 2 > _LIMITS["max_headers"] or len(head) > _LIMITS["max_field_size"]:
            return _FULL_PARSE
        raw_value, stripped = split
        handler = self.handler
        if handler.limiter is not None:
            return _FULL_PARSE  # deciding the whole-object answer would spend a token of the client's rate
        now = time.time()
        base = self._current(self.wholes, stripped, now)
        if base is None:
            decided = self._decide(stripped, client, basis=True)
            if not isinstance(decided, Prepared):
                return decided  # a miss (or a Load first): the same for the head with its Range
            base = decided
        if base.hit.viewer is None and not base.hit.admits(client, now):  # a hop's viewer was judged by its node
            return None
        hit = base.hit
        if base.method != "GET" or hit.status != 200 or hit.meta.status != 200 or hit.meta.vary:
            return _FULL_PARSE
        try:
            value = raw_value.decode("ascii").strip(" \t")
        except UnicodeDecodeError:
            return _FULL_PARSE
        rng = ranges.resolve(value, hit.meta.length)
        if not isinstance(rng, ranges.Single):
            return _FULL_PARSE
        first, last = rng.range.first, rng.range.last
        size = handler.engine.slice_size
        if last // size - first // size >= MAX_SLICES:
            return _FULL_PARSE
        content_range = ranges.format_content_range(rng.range, hit.meta.length)
        encoded = rangecut.cut_206(base.head, hit, rng.range, content_range)
        if encoded is None:
            return _FULL_PARSE
        handler.engine.store.touch_meta(hit.req.entry_key, hit.req.primary)
        fields = [*hit.headers[:-1], ("Content-Range", content_range), ("Content-Length", str(last - first + 1))]
        derived = replace(hit, status=206, headers=fields, first=first, last=last)
        counter = observe.requests_counter(hit.site.name, "GET", 206, CacheStatus.HIT)
        slices = _slices(derived, size)
        return Prepared(derived, "GET", base.keep_alive, encoded, counter, slices, base.site_bytes, value)

    def _parse(self, head: bytes, client: str, any_size: bool = False) -> tuple[Hit | Load | None, str, bool]:
        if rangecut.needs_strict_parser(head):
            return None, "", False
        msg = self.parser.message(head)
        if msg is None or msg.version != HttpVersion11 or msg.method not in ("GET", "HEAD"):
            return None, "", False
        if any(_odd(k, v) for k, v in msg.raw_headers):
            return None, "", False
        target = msg.path  # as sent (aiohttp decodes it with surrogateescape)
        try:
            target.encode("ascii")
            headers = tuple((k.decode("ascii"), v.decode("ascii")) for k, v in msg.raw_headers)
        except UnicodeError:
            return None, "", False
        hosts = [v for k, v in headers if k.lower() == "host"]
        if len(hosts) != 1:
            return None, "", False
        m = msg.method
        try:
            hit = find_hit(self.handler, m, hosts[0], target, headers, client, any_size)
        except Exception:  # a bug here must cost speed, not the request: the full handler answers it
            log.exception("fast path: looking up %s failed", target[:200])
            return None, "", False
        return hit, m, not msg.should_close

    def _head(self, hit: Hit, keep_alive: bool) -> bytes | None:
        """The head aiohttp would write for these fields: Date and Server when absent, Connection when due."""
        fields = hit.headers
        names = {k.lower() for k, _ in fields}
        lines = [f"HTTP/1.1 {hit.status} {http.HTTPStatus(hit.status).phrase}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in fields)
        try:
            head = "".join(lines).encode("utf-8")
        except UnicodeEncodeError:
            return None
        extra = b""
        if "date" not in names:
            extra += b"Date: " + self.date() + b"\r\n"
        if "server" not in names:
            extra += b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
        if not keep_alive:
            extra += b"Connection: close\r\n"
        return head + extra + b"\r\n"


def _site_bytes(hit: Hit) -> Any:
    return observe.site_bytes(hit.site.name, observe.upstream(CacheStatus.HIT, metrics.Sources()))


def _with_age(head: bytes, old: Hit, new: Hit) -> bytes | None:
    """`head` (encoded from `old`) with the Age line of `new`; None if the line is not there exactly once."""
    before, after = _age_line(old), _age_line(new)
    if before is None or after is None or head.count(b"\r\nAge: ") != 1 or before not in head:
        return None
    return head.replace(before, after, 1)


def _age_line(hit: Hit) -> bytes | None:
    ages = [v for k, v in hit.headers if k == "Age"]
    return f"\r\nAge: {ages[0]}\r\n".encode() if len(ages) == 1 else None


def _slices(hit: Hit, size: int) -> tuple[tuple[str, int, int], ...]:
    if hit.last < hit.first:
        return ()
    out = []
    for index in ranges.slice_indices(ranges.ByteRange(hit.first, hit.last), size):
        base = index * size
        lo, hi = max(hit.first, base) - base, min(hit.last + 1, base + hit.meta.slice_length(index)) - base
        out.append((slice_name(hit.req.entry_key, hit.meta.slice_version, index), lo, hi))
    return tuple(out)
