"""HLS playlists into the URLs a player would fetch: the renditions of a master playlist and the segments (and
initialisation sections) of a media playlist, resolved against the playlist's own URL. Pure; never raises.

A manifest is origin input: a URI that does not resolve (urljoin raises ValueError on '//[') is skipped, and a
DASH template with a number that is not one, or a width or segment count out of all proportion, yields no
segments rather than an exception or a gigabyte string. What a manifest makes is bounded, not only what it is:
past MAX_SEGMENTS URLs, or MAX_CHARS characters of the URLs and bases resolved for it, it is refused (_Found).
Every URL is the manifest's base joined with a line, so a count alone let a 100 KB MPD whose BaseURL is 100,000
characters make 100,000 URLs of 100 KB each (9.5 GB on the parser's thread), and a 6.6 MB playlist of a million
lines under a 4 KB URL, 4 GB.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from edgecache.core.siteurl import MAX_URL

_URI_ATTR = re.compile(r'URI="([^"]*)"')


# A relative reference that is only path segments (none of them "." or "..") and perhaps a query: resolved, it is
# the base's directory followed by itself. Most segment lines are one ("seg123.m4s?token=..."), and urljoin costs
# ~30 us each: 3/4 of expanding a 3,000-segment playlist.
# Never "." or ".." (nor empty), and no ";" (urljoin drops empty parameters). An empty query is dropped too.
_SEGMENT = r"[\w~!$&'()*+,=@%-][\w.~!$&'()*+,=@%-]*"
_PLAIN_REF = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*(?:\?[^#\s]+)?")
# Only http(s) in lower case: urljoin lowercases a scheme, and joins only those it knows to be hierarchical.
_PLAIN_BASE = re.compile(r"(https?://[^/?#\s]*)((?:/[^/?#\s]*)*)(?:[?#]\S*)?")


@functools.lru_cache(maxsize=64)
def _directory(base: str) -> str | None:
    """The prefix a plain reference is resolved under, for a base whose path has no dot segments or empty ones
    (urljoin rewrites those); None for any other base, which then goes through urljoin."""
    m = _PLAIN_BASE.fullmatch(base)
    if m is None or any(seg in ("", ".", "..") for seg in m.group(2).split("/")[1:-1]):
        return None
    try:
        parts = urlsplit(base)
    except ValueError:  # an unclosed IPv6 bracket: urljoin says so for every reference
        return None
    if f"{parts.scheme}://{parts.netloc}" != m.group(1) or parts.path != m.group(2):
        return None  # characters urlsplit removes or reads otherwise
    path = m.group(2) or "/"
    return m.group(1) + path[: path.rfind("/") + 1]


def _join(base: str, url: str) -> str | None:
    """urljoin(base, url), or None for a URL that is not one (an unclosed IPv6 bracket, say)."""
    if (prefix := _directory(base)) is not None and _PLAIN_REF.fullmatch(url):
        return prefix + url
    try:
        return urljoin(base, url)
    except ValueError:
        return None


MAX_SEGMENTS = 100_000  # URLs of one manifest: one that names more is refused, not followed
# Characters of every URL and base resolved for one manifest, kept or not: 100,000 URLs of 600 characters. What
# joining costs is charged, so neither the parser's memory nor its time grows past it, whatever the manifest.
MAX_CHARS = 64 * 2**20


class _TooMuch(Exception):
    """The manifest makes more than MAX_SEGMENTS URLs or MAX_CHARS characters: it is refused."""


class _Found:
    """What resolving one manifest's URLs has cost, within the bounds: every URL tried counts, kept or not, and
    every character joined. A URL longer than MAX_URL is skipped: no site_url takes it, so no job could fetch it."""

    __slots__ = ("chars", "refused", "tried")

    def __init__(self) -> None:
        self.tried = 0
        self.chars = 0
        self.refused = False  # a bound was passed: the manifest is refused (expand says so)

    def join(self, base: str, url: str) -> str | None:
        """_join, charged."""
        joined = _join(base, url)
        self.chars += len(url) + (len(joined) if joined is not None else 0)
        if self.chars > MAX_CHARS:
            self.refused = True
            raise _TooMuch
        return joined

    def add(self, urls: list[str], base: str, url: str) -> None:
        self.tried += 1
        if self.tried > MAX_SEGMENTS:
            self.refused = True
            raise _TooMuch
        if (joined := self.join(base, url)) is not None and len(joined) <= MAX_URL:
            urls.append(joined)


@dataclass(frozen=True, slots=True)
class Playlist:
    master: bool
    variants: tuple[str, ...]  # media playlists (master only), including alternative renditions
    segments: tuple[str, ...]  # media segments and EXT-X-MAP sections (media only)


def parse_hls(text: str, base: str, found: _Found | None = None) -> Playlist | None:
    """None for a text that is not a playlist, or one past the bounds (then `found` says so)."""
    if next(_lines(text), None) != "#EXTM3U":
        return None
    master = "#EXT-X-STREAM-INF" in text and any(line.startswith("#EXT-X-STREAM-INF") for line in _lines(text))
    found, variants, segments = found or _Found(), list[str](), list[str]()
    try:
        for line in itertools.islice(_lines(text), 1, None):
            if not line:
                continue
            if line.startswith(("#EXT-X-MEDIA:", "#EXT-X-I-FRAME-STREAM-INF:")) and (m := _URI_ATTR.search(line)):
                found.add(variants, base, m.group(1))
            elif line.startswith("#EXT-X-MAP:") and (m := _URI_ATTR.search(line)):
                found.add(segments, base, m.group(1))
            elif not line.startswith("#"):
                found.add(variants if master else segments, base, line)
    except _TooMuch:
        return None
    return Playlist(master, tuple(dict.fromkeys(variants)), tuple(dict.fromkeys(segments)))


def _lines(text: str) -> Iterator[str]:
    """The stripped lines of `text` (split at LF: CR LF's CR is a blank), split a block of about LINES_BLOCK
    characters at a time: a list of them all is 800 MB for a 32 MiB playlist of short lines, while a search for each
    line's end in Python is slower than one split per block."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start + LINES_BLOCK)
        end = len(text) if end < 0 else end
        yield from map(str.strip, text[start:end].split("\n"))
        start = end + 1


LINES_BLOCK = 64 * 1024


# --- DASH (ISO/IEC 23009-1): SegmentTemplate (with $Number$ or a SegmentTimeline), SegmentList, BaseURL -----

_DURATION = re.compile(
    r"P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.ASCII
)
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_TEMPLATE_ID = re.compile(r"\$(RepresentationID|Bandwidth|Number|Time|)(%0\d+d)?\$", re.ASCII)
# Elements of an MPD: its tree is ~340 bytes an element, and a 28.6 MiB MPD of 3 million <S d="1"/> took the
# parser's process 1 GB; a SegmentList or SegmentTimeline of MAX_SEGMENTS elements is a quarter of this.
MAX_ELEMENTS = 4 * MAX_SEGMENTS
MAX_WIDTH = 32  # of a $Number%0Nd$ identifier: wider templates are refused, not padded to a gigabyte


def _seconds(value: str | None) -> float | None:
    m = _DURATION.fullmatch(value or "")
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    total = d * 86400 + h * 3600 + mi * 60 + s
    return total if math.isfinite(total) else None  # 400 digits of seconds is inf, not a duration


def _int(value: str | None, default: int) -> int | None:
    """An integer attribute, `default` when absent, None when it is not an integer of at most 18 digits."""
    if value is None:
        return default
    return int(value) if _INTEGER.fullmatch(value.strip()) else None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _base(found: _Found, parent: str, el: ET.Element) -> str:
    """The element's BaseURL resolved against its parent's (elements are falsy when childless: test for None)."""
    given = _child(el, "BaseURL")
    joined = found.join(parent, (given.text or "").strip()) if given is not None else None
    return joined if joined is not None else parent


def _fill(template: str, rep_id: str, bandwidth: str, number: int, time: int) -> str:
    """$RepresentationID$, $Bandwidth$, $Number$ and $Time$ (with an optional %0Nd width), and $$ for '$'."""

    def sub(m: re.Match[str]) -> str:
        name, width = m.group(1), m.group(2)
        if name == "":
            return "$"
        if name in ("Number", "Time"):
            value = number if name == "Number" else time
            return str(value).zfill(int(width[2:-1])) if width else str(value)
        return rep_id if name == "RepresentationID" else bandwidth

    return _TEMPLATE_ID.sub(sub, template)


def _widths_ok(template: str) -> bool:
    widths = (m.group(2)[2:-1] for m in _TEMPLATE_ID.finditer(template) if m.group(2))
    return all(len(w) <= 2 and int(w) <= MAX_WIDTH for w in widths)


def _template_urls(
    found: _Found, tpl: ET.Element, base: str, rep: ET.Element, period_seconds: float | None
) -> list[str]:
    rep_id, bandwidth = rep.get("id", ""), rep.get("bandwidth", "")
    urls: list[str] = []
    if (init := tpl.get("initialization")) and _widths_ok(init):
        found.add(urls, base, _fill(init, rep_id, bandwidth, 0, 0))
    media = tpl.get("media")
    start = _int(tpl.get("startNumber"), 1)
    if not media or not _widths_ok(media) or start is None:
        return urls
    timeline = _child(tpl, "SegmentTimeline")
    if timeline is not None:
        number, t = start, 0
        for s in timeline:
            at, d, r = _int(s.get("t"), t), _int(s.get("d"), 0), _int(s.get("r"), 0)
            if at is None or d is None or r is None:
                return urls  # the timeline is unreadable from here on
            t = at
            for _ in range(r + 1):
                found.add(urls, base, _fill(media, rep_id, bandwidth, number, t))
                number, t = number + 1, t + d
        return urls
    duration, timescale = _int(tpl.get("duration"), 0), _int(tpl.get("timescale"), 1)
    if not duration or duration < 0 or not timescale or timescale < 0 or period_seconds is None:
        return urls
    span = period_seconds * timescale / duration  # segments, inf when the product overflows
    count = math.ceil(span) if span < MAX_SEGMENTS else MAX_SEGMENTS
    for i in range(count):
        found.add(urls, base, _fill(media, rep_id, bandwidth, start + i, 0))
    return urls


def parse_dash(
    text: str, base: str, representations: frozenset[str] = frozenset(), found: _Found | None = None
) -> tuple[str, ...] | None:
    """Every segment URL of every Representation (or only those whose id is in `representations`); None for a text
    that is not an MPD, or one past the bounds (then `found` says so)."""
    found = found or _Found()
    if text.count("<") > MAX_ELEMENTS:  # each element has one at least: refused before a tree of them is built
        found.refused = True
        return None
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError):  # ValueError: text with lone surrogates cannot be fed to expat
        return None
    if _local(root.tag) != "MPD":
        return None
    try:
        return tuple(dict.fromkeys(_mpd_urls(root, base, representations, found)))
    except _TooMuch:
        return None


def _mpd_urls(root: ET.Element, base: str, representations: frozenset[str], found: _Found) -> list[str]:
    total = _seconds(root.get("mediaPresentationDuration"))
    urls: list[str] = []
    for period in (c for c in root if _local(c.tag) == "Period"):
        pbase = _base(found, _base(found, base, root), period)
        seconds = _seconds(period.get("duration")) or total
        for aset in (c for c in period if _local(c.tag) == "AdaptationSet"):
            abase = _base(found, pbase, aset)
            for rep in (c for c in aset if _local(c.tag) == "Representation"):
                if representations and rep.get("id") not in representations:
                    continue
                rbase = _base(found, abase, rep)
                tpl = _child(rep, "SegmentTemplate")
                tpl = tpl if tpl is not None else _child(aset, "SegmentTemplate")
                seg_list = _child(rep, "SegmentList")
                if tpl is not None:
                    urls.extend(_template_urls(found, tpl, rbase, rep, seconds))
                elif seg_list is not None:
                    if (init := _child(seg_list, "Initialization")) is not None and init.get("sourceURL"):
                        found.add(urls, rbase, init.get("sourceURL", ""))
                    for s in seg_list:
                        if _local(s.tag) == "SegmentURL":
                            found.add(urls, rbase, s.get("media", ""))
                elif rbase != abase:
                    found.add(urls, rbase, "")  # a single-file representation named by its BaseURL
    return urls


def expand(url: str, body: bytes, representations: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
    """The URLs a manifest at `url` names on its own host (never another: a manifest is the origin's word), in
    order, each once; None for one refused, past MAX_SEGMENTS or MAX_CHARS. Linear in the manifest's size; never
    raises."""
    text, cost = body.decode("utf-8", "replace"), _Found()
    if urlsplit(url).path.endswith(".mpd"):
        found: tuple[str, ...] = parse_dash(text, url, representations, cost) or ()
    else:
        playlist = parse_hls(text, url, cost)
        found = (*playlist.variants, *playlist.segments) if playlist is not None else ()
    if cost.refused:
        return None
    host = urlsplit(url).netloc
    return tuple(dict.fromkeys(_as_requested(u) for u in found if _on_host(u, host)))


# What a request line cannot carry as written: a space, a control or a non-ASCII character.
_UNSENDABLE = re.compile(r"[^\x21-\x7e]")
_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _as_requested(url: str) -> str:
    """`url` as a player's HTTP client requests it: what no request line may carry percent-encoded in UTF-8 (a
    segment named "part 1.ts"), everything else as written (an escape stays one: %3B is not ';')."""
    return url if _UNSENDABLE.search(url) is None else quote(url, safe=_VISIBLE)


def _on_host(url: str, host: str) -> bool:
    """urlsplit(url).netloc == host, without splitting the whole URL (the netloc ends at the first / ? or #)."""
    rest = url.partition("://")[2]
    return rest.startswith(host) and (len(rest) == len(host) or rest[len(host)] in "/?#")
