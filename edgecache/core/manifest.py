"""HLS playlists into the URLs a player would fetch: the renditions of a master playlist and the segments (and
initialisation sections) of a media playlist, resolved against the playlist's own URL. Pure; never raises."""

from __future__ import annotations

import re
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
