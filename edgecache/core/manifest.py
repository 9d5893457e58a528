"""HLS playlists into the URLs a player would fetch: the renditions of a master playlist and the segments (and
initialisation sections) of a media playlist, resolved against the playlist's own URL. Pure; never raises."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urljoin

_URI_ATTR = re.compile(r'URI="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Playlist:
    master: bool
    variants: tuple[str, ...]  # media playlists (master only), including alternative renditions
    segments: tuple[str, ...]  # media segments and EXT-X-MAP sections (media only)


def parse_hls(text: str, base: str) -> Playlist | None:
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    if not lines or lines[0] != "#EXTM3U":
        return None
    variants: list[str] = []
    segments: list[str] = []
    master = any(line.startswith("#EXT-X-STREAM-INF") for line in lines)
    expect_uri = False
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith(("#EXT-X-MEDIA:", "#EXT-X-I-FRAME-STREAM-INF:")) and (m := _URI_ATTR.search(line)):
                variants.append(urljoin(base, m.group(1)))
            elif line.startswith("#EXT-X-MAP:") and (m := _URI_ATTR.search(line)):
                segments.append(urljoin(base, m.group(1)))
            expect_uri = line.startswith(("#EXT-X-STREAM-INF", "#EXTINF"))
            continue
        if master:
            variants.append(urljoin(base, line))
        elif expect_uri or not master:
            segments.append(urljoin(base, line))
        expect_uri = False
    return Playlist(master, tuple(dict.fromkeys(variants)), tuple(dict.fromkeys(segments)))


# --- DASH (ISO/IEC 23009-1): SegmentTemplate (with $Number$ or a SegmentTimeline), SegmentList, BaseURL -----

_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
MAX_SEGMENTS = 100_000  # a manifest that expands beyond this is refused, not followed


def _seconds(value: str | None) -> float | None:
    m = _DURATION.match(value or "")
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _base(parent: str, el: ET.Element) -> str:
    """The element's BaseURL resolved against its parent's (elements are falsy when childless: test for None)."""
    found = _child(el, "BaseURL")
    return urljoin(parent, (found.text or "").strip()) if found is not None else parent


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

    return re.sub(r"\$(RepresentationID|Bandwidth|Number|Time|)(%0\d+d)?\$", sub, template)


def _template_urls(tpl: ET.Element, base: str, rep: ET.Element, period_seconds: float | None) -> list[str]:
    rep_id, bandwidth = rep.get("id", ""), rep.get("bandwidth", "")
    urls = []
    if init := tpl.get("initialization"):
        urls.append(urljoin(base, _fill(init, rep_id, bandwidth, 0, 0)))
    media = tpl.get("media")
    if not media:
        return urls
    start = int(tpl.get("startNumber", "1"))
    timeline = _child(tpl, "SegmentTimeline")
    if timeline is not None:
        number, t = start, 0
        for s in timeline:
            t = int(s.get("t", t))
            d, r = int(s.get("d", "0")), int(s.get("r", "0"))
            for _ in range(r + 1):
                urls.append(urljoin(base, _fill(media, rep_id, bandwidth, number, t)))
                number, t = number + 1, t + d
                if len(urls) > MAX_SEGMENTS:
                    return urls
        return urls
    duration, timescale = int(tpl.get("duration", "0")), int(tpl.get("timescale", "1"))
    if not duration or period_seconds is None:
        return urls
    count = min(MAX_SEGMENTS, int(-(-period_seconds * timescale // duration)))
    urls.extend(urljoin(base, _fill(media, rep_id, bandwidth, start + i, 0)) for i in range(count))
    return urls


def parse_dash(text: str, base: str, representations: frozenset[str] = frozenset()) -> tuple[str, ...] | None:
    """Every segment URL of every Representation (or only those whose id is in `representations`)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    if _local(root.tag) != "MPD":
        return None
    total = _seconds(root.get("mediaPresentationDuration"))
    urls: list[str] = []
    for period in (c for c in root if _local(c.tag) == "Period"):
        pbase = _base(_base(base, root), period)
        seconds = _seconds(period.get("duration")) or total
        for aset in (c for c in period if _local(c.tag) == "AdaptationSet"):
            abase = _base(pbase, aset)
            for rep in (c for c in aset if _local(c.tag) == "Representation"):
                if representations and rep.get("id") not in representations:
                    continue
                rbase = _base(abase, rep)
                tpl = _child(rep, "SegmentTemplate")
                tpl = tpl if tpl is not None else _child(aset, "SegmentTemplate")
                seg_list = _child(rep, "SegmentList")
                if tpl is not None:
                    urls.extend(_template_urls(tpl, rbase, rep, seconds))
                elif seg_list is not None:
                    if (init := _child(seg_list, "Initialization")) is not None and init.get("sourceURL"):
                        urls.append(urljoin(rbase, init.get("sourceURL", "")))
                    urls.extend(urljoin(rbase, s.get("media", "")) for s in seg_list if _local(s.tag) == "SegmentURL")
                elif rbase != abase:
                    urls.append(rbase)  # a single-file representation named by its BaseURL
                if len(urls) > MAX_SEGMENTS:
                    return None
    return tuple(dict.fromkeys(urls))
