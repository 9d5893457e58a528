from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.manifest import Playlist, parse_hls

MASTER = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",URI="audio/en.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360,AUDIO="aud"
360p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=2400000,RESOLUTION=1280x720,AUDIO="aud"
https://cdn.video.test/v/720p/index.m3u8
"""

MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:6
#EXT-X-MAP:URI="init.mp4"
#EXTINF:6.0,
seg0.m4s
#EXTINF:6.0,
seg1.m4s?token=abc
#EXT-X-ENDLIST
"""


def test_master_playlist_lists_every_rendition() -> None:
    p = parse_hls(MASTER, "http://video.test/v/master.m3u8")
    assert p == Playlist(
        True,
        (
            "http://video.test/v/audio/en.m3u8",
            "http://video.test/v/360p/index.m3u8",
            "https://cdn.video.test/v/720p/index.m3u8",
        ),
        (),
    )


def test_media_playlist_lists_segments_and_init_section() -> None:
    p = parse_hls(MEDIA, "http://video.test/v/360p/index.m3u8")
    assert p is not None
    assert p.segments == (
        "http://video.test/v/360p/init.mp4",
        "http://video.test/v/360p/seg0.m4s",
        "http://video.test/v/360p/seg1.m4s?token=abc",
    )


def test_not_a_playlist() -> None:
    assert parse_hls("<html>", "http://x/") is None


@given(st.text(max_size=300))
def test_never_raises(text: str) -> None:
    parse_hls("#EXTM3U\n" + text, "http://video.test/a/b.m3u8")
