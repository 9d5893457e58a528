"""Where the request that closes its connection ends, in what a client sent (RFC 9112 9.6): a server answers the
request that carried `Connection: close` (or an HTTP/1.0 one without keep-alive) and processes nothing after it.

aiohttp's parser refuses a read holding more bytes after such a request (`Data after Connection: close`) and drops
the requests it parsed from that read: the client got `400 malformed request` instead of its answer. So what is
fed to it (proxy.headguard) is cut where that request ends, and nothing after it is fed.

Requests are followed from a message boundary through unambiguous framing only, as aiohttp's parser (llhttp) reads
it: one Content-Length of digits, or Transfer-Encoding ending in chunked without Content-Length. Anything else (an
Upgrade, CONNECT, a version llhttp refuses, an odd field or chunk line, a head or line past its bound) turns the scan
off: every byte is passed on as it comes and aiohttp judges it, as before. Nothing here raises on client input.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024  # a head unended past this is left to aiohttp (its line and field limits), as the fast path does
MAX_LINE = 4096  # a chunk-size line (extensions and all) or a trailer section
_HEX = re.compile(rb"[0-9a-fA-F]+")
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
# The others llhttp takes: each request of one is refused with a 505 and the close (core.admit.version), by either
# path (the fast path's route.unversioned), so it is the closing request, whatever its fields say.
_REFUSED = frozenset({b"HTTP/0.9", b"HTTP/2.0"})


class Kind(enum.Enum):
    HEAD = "head"  # a request head, from its first byte
    BODY = "body"  # `left` bytes of a Content-Length body
    SIZE = "size"  # a chunk-size line
    DATA = "data"  # `left` bytes of a chunk's data, then its CRLF
    TRAILERS = "trailers"  # after the last chunk: trailer fields, then a blank line
    DONE = "done"  # the request that closes the connection has ended: nothing more is passed on
    OFF = "off"  # framing not followed: everything is passed on


@dataclass(frozen=True, slots=True)
class Scan:
    kind: Kind = Kind.HEAD
    held: bytes = b""  # the start of a head, chunk-size line or trailer section not ended yet
    left: int = 0  # BODY, DATA: its bytes still to come (DATA: its CRLF included)
    closes: bool = False  # the request in progress closes the connection


START = Scan()
_OFF = Scan(Kind.OFF)


def scan(state: Scan, data: bytes, ends: list[int] | None = None) -> tuple[Scan, int]:
    """The state after `data`, and how many of its bytes to pass on: all of them, or those up to the end of the
    request that closes the connection (none once it has ended). `ends`, when given, gets where each request that
    ends in `data` ends (an offset in it), in order."""
    i = 0
    while i < len(data) or state.kind is Kind.DONE:
        if state.kind is Kind.DONE:
            return state, i
        if state.kind is Kind.OFF:
            return state, len(data)
        if state.kind in (Kind.BODY, Kind.DATA):
            take = min(state.left, len(data) - i)
            i += take
            # Of a chunk, only its last two bytes are looked at (its CRLF): nothing of a body is kept.
            tail = (state.held + data[max(i - take, i - 2) : i])[-2:] if state.kind is Kind.DATA else b""
            state = Scan(state.kind, tail, state.left - take, state.closes)
            if state.left == 0:
                state = _after_body(state)
        else:
            state, i = _line(state, data, i)
        # Nothing held of a head: the next request's has not begun (a head begun and not ended holds its bytes).
        if ends is not None and state.kind in (Kind.HEAD, Kind.DONE) and not state.held:
            ends.append(i)
    return state, len(data)


def _after_body(state: Scan) -> Scan:
    if state.kind is Kind.BODY:
        return _ended(state.closes)
    if state.held[-2:] != b"\r\n":  # DATA: a chunk's data is followed by CRLF
        return _OFF
    return Scan(Kind.SIZE, closes=state.closes)


def _ended(closes: bool) -> Scan:
    return Scan(Kind.DONE) if closes else START


def _line(state: Scan, data: bytes, i: int) -> tuple[Scan, int]:
    """HEAD, SIZE or TRAILERS from data[i:]: the next state, and where it starts in `data`."""
    bound = MAX_HEAD if state.kind is Kind.HEAD else MAX_LINE
    # What is searched: the bytes held joined to as many of data's as could end it; data itself, uncopied, when
    # none are held (requests pipelined in one read are each found in place).
    buf, start = (state.held + data[i : i + bound + 4], 0) if state.held else (data, i)
    if state.kind is Kind.SIZE:
        end, mark = buf.find(b"\r\n", start, start + bound + 2), 2
    elif state.kind is Kind.TRAILERS and buf.startswith(b"\r\n", start):  # no trailer fields: a blank line
        end, mark = start, 2
    else:  # a head, or trailer fields: ended by a blank line
        end, mark = buf.find(b"\r\n\r\n", start, start + bound + 4), 4
    if end < 0:
        held = buf[start:] if buf is data else buf
        return (_OFF if len(held) > bound else Scan(state.kind, held, closes=state.closes)), len(data)
    at = i + (end - start) + mark - len(state.held)  # where what follows starts in `data`
    if state.kind is Kind.HEAD:
        return _head(buf[start:end]), at
    if state.kind is Kind.TRAILERS:
        return _ended(state.closes), at
    size = buf[start:end].split(b";", 1)[0]
    if not _HEX.fullmatch(size):
        return _OFF, len(data)
    n = int(size, 16)
    return (Scan(Kind.DATA, left=n + 2, closes=state.closes) if n else Scan(Kind.TRAILERS, closes=state.closes)), at


def _head(head: bytes) -> Scan:
    """The state after a request head (without its blank line): its body's, or the next request's."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not (parts[2] in _VERSIONS or parts[2] in _REFUSED) or parts[0] == b"CONNECT":
        return _OFF
    tokens: set[bytes] = set()
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        name = name.lower()
        if not colon or not name or name != name.strip() or name == b"upgrade":
            return _OFF
        if name in (b"connection", b"proxy-connection"):  # llhttp reads both alike
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif name == b"content-length":
            lengths.append(value.strip())
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
    closes = b"close" in tokens if parts[2] == b"HTTP/1.1" else b"keep-alive" not in tokens or parts[2] in _REFUSED
    if b"upgrade" in tokens:
        return _OFF
    if codings:
        chunked = not lengths and codings[-1] == b"chunked" and parts[2] == b"HTTP/1.1"
        return Scan(Kind.SIZE, closes=closes) if chunked else _OFF
    if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and lengths[0].isascii())):
        return _OFF
    n = int(lengths[0]) if lengths else 0
    return Scan(Kind.BODY, left=n, closes=closes) if n else _ended(closes)
