"""Cutting a single-range answer from a memoised whole-object answer (see Decider._ranged): the Range line of
a request head, and the 206 head made from the 200's."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgecache.core.entry import ObjectMeta
from edgecache.proxy import headparse
from edgecache.proxy.hit import Hit
from edgecache.proxy.observe import Tally
from edgecache.storage.slicenames import slice_prefix

RANGE_VALUE_MAX = 256  # longer Range values are left to the full parse
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_MAX_HEADERS, _MAX_FIELD_SIZE = headparse.LIMITS["max_headers"], headparse.LIMITS["max_field_size"]


_FOLD = rb"\r\n[ \t]"  # obs-fold: a line that goes on from the one before it
_FOLDED = re.compile(_FOLD)
# In a lowered head, in one pass (split_range: 1.7 -> 0.9 µs): obs-fold, the If-Range line, and each Range line.
# None of these overlaps another (each is a CRLF and what follows it), so the scan finds every one.
_FIELD_STARTS = re.compile(_FOLD + rb"|\r\nif-range:|\r\nrange:")
_ONE_RANGE = [b"\r\nrange:"]


def needs_strict_parser(head: bytes, lines: int = -1) -> bool:
    """Bare LF line ends or obs-fold: heads only aiohttp's strict parser may judge, never the fast path. `lines`:
    the head's CRLFs, when the caller has counted them."""
    return _bare_lf(head, lines) or _FOLDED.search(head) is not None


def _bare_lf(head: bytes, lines: int = -1) -> bool:
    """A line ended by LF alone (`lines`: the head's CRLFs, when the caller has counted them)."""
    return head.count(b"\n") != (head.count(b"\r\n") if lines < 0 else lines)


_PLAIN = re.compile(rb"[ \t]*[!-~]+(?:[ \t]+[!-~]+)*[ \t]*")


def plain_value(value: bytes) -> bool:
    """Visible ASCII words between spaces and tabs: a Range value every parser takes as it is. Anything else
    goes to the full parse, whose parser (aiohttp's) decides whether the head is refused."""
    return _PLAIN.fullmatch(value) is not None


def split_range(head: bytes) -> tuple[bytes, bytes] | None:
    """(the Range value, the head without its Range line) when the head has exactly one Range line, no
    If-Range, nothing aiohttp's strict parser must judge, and fields within aiohttp's limits; else None."""
    lower = head.lower()  # field names are found in it: a regex ignoring case took a player's range 1 us more
    # One Range line, no If-Range, no obs-fold (needs_strict_parser's: its other half, bare LFs, follows)
    if _FIELD_STARTS.findall(lower) != _ONE_RANGE:
        return None
    lines = head.count(b"\r\n")
    # The Range line counts against aiohttp's limits too: the number of fields (one per line: checked above), and
    # in a long head a field's size, which aiohttp sums oddly across neighbouring fields. Such heads get the full
    # parse, whose parser (aiohttp's) decides them.
    if _bare_lf(head, lines) or lines - 2 > _MAX_HEADERS or len(head) > _MAX_FIELD_SIZE:
        return None
    at = lower.find(b"\r\nrange:")
    end = head.find(b"\r\n", at + 8)  # there is one: the head ends with an empty line
    if end - at - 8 > RANGE_VALUE_MAX:
        return None
    return head[at + 8 : end], head[:at] + head[end:]


@dataclass(frozen=True, slots=True)
class Cutter:
    """What every 206 cut from one whole-object answer shares, worked out once for that answer's head (which changes
    only as its Age ticks: prepared.head_at): the encoded 206 head around its Content-Range and Content-Length, and
    the fields before them. A player asks for a new range on nearly every request, so each of these is cut from it."""

    whole: bytes  # the encoded 200 head it was made from: it cuts only the answer that head begins
    before: bytes  # the 206's head up to its Content-Range: the status line changes (its version stays)
    after: bytes  # and after its new Content-Length: the fields aiohttp adds (Date, Server, Connection)
    fields: list[tuple[str, str]]  # the decided fields but the last, the whole object's Content-Length
    tally: Tally  # what counts its 206s
    kept: bool  # whether an answer cut from it may be remembered (decide._remember)
    meta: ObjectMeta  # the stored copy it cuts from
    prefix: str  # and what that copy's slice names begin with (heldslices.slices_of)
    age_span: tuple[int, int] | None  # where its 206 heads hold their Age value, as whole does (prepared.head_at)

    def head(self, content_range: str, length: int) -> bytes:
        """The encoded 206 head for `content_range` (core.ranges.format_content_range) of `length` bytes."""
        return b"%sContent-Range: %s\r\nContent-Length: %d\r\n%s" % (
            self.before,
            content_range.encode(),
            length,
            self.after,
        )


def cutter(whole: bytes, span: tuple[int, int] | None, hit: Hit, tally: Tally, kept: bool) -> Cutter | None:
    """The Cutter of the encoded head of a whole-object 200 (`whole`, encoded from `hit`; `span`: where it holds its
    Age value, if it is brought up to the clock's as it is sent), whose Content-Length is its last field (as
    hit.planned_hit() puts it) and that has no Content-Range; None: its ranges are not cut."""
    length = hit.meta.length
    if not hit.headers or hit.headers[-1] != ("Content-Length", str(length)):
        return None
    if any(k.lower() == "content-range" for k, _ in hit.headers):
        return None
    status_end = whole.find(b"\r\n") + 2
    old = b"Content-Length: %d\r\n" % length
    at = whole.rfind(old)
    if whole[8:status_end] != b" 200 OK\r\n" or whole[:8] not in _VERSIONS or at < status_end:
        return None
    before = whole[:8] + b" 206 Partial Content\r\n" + whole[status_end:at]
    if span is not None:  # the Age value lies among the fields kept before the Content-Range
        if not status_end <= span[0] <= span[1] <= at:
            return None
        span = span[0] + len(before) - at, span[1] + len(before) - at
    prefix = slice_prefix(hit.req.entry_key, hit.meta.slice_version)
    return Cutter(whole, before, whole[at + len(old) :], hit.headers[:-1], tally, kept, hit.meta, prefix, span)
