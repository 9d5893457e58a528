from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from hypothesis import given
from hypothesis import strategies as st

from edgecache.admin.jobs import Job, JobRunner
from edgecache.core.manifest import MAX_CHARS, MAX_ELEMENTS, MAX_SEGMENTS, Playlist, _join, expand, parse_hls
from edgecache.core.siteurl import MAX_URL
from edgecache.storage.disk import DiskTier

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


def test_expanded_urls_are_as_a_player_requests_them() -> None:
    """A space, a control or a non-ASCII character is percent-encoded in UTF-8; an escape stays as written."""
    body = "#EXTM3U\n#EXTINF:6,\nx%3By.ts\n#EXTINF:6,\nsp ace.ts\n#EXTINF:6,\ncafé.ts\n#EXTINF:6,\na|b.ts\n"
    assert expand("http://video.test/m/index.m3u8", body.encode()) == (
        "http://video.test/m/x%3By.ts",
        "http://video.test/m/sp%20ace.ts",
        "http://video.test/m/caf%C3%A9.ts",
        "http://video.test/m/a|b.ts",
    )


def test_not_a_playlist() -> None:
    assert parse_hls("<html>", "http://x/") is None


@given(st.text(max_size=300))
def test_never_raises(text: str) -> None:
    parse_hls("#EXTM3U\n" + text, "http://video.test/a/b.m3u8")


MPD = """<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" mediaPresentationDuration="PT20S">
  <Period>
    <AdaptationSet mimeType="video/mp4">
      <SegmentTemplate initialization="$RepresentationID$/init.mp4" media="$RepresentationID$/seg-$Number%05d$.m4s"
                       startNumber="1" duration="6000" timescale="1000"/>
      <Representation id="v360" bandwidth="800000"/>
      <Representation id="v720" bandwidth="2400000"/>
    </AdaptationSet>
    <AdaptationSet mimeType="audio/mp4">
      <Representation id="a1" bandwidth="128000">
        <SegmentTemplate initialization="a/init.mp4" media="a/$Time$.m4s">
          <SegmentTimeline><S t="0" d="10" r="1"/><S d="5"/></SegmentTimeline>
        </SegmentTemplate>
      </Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="text/vtt">
      <Representation id="sub"><BaseURL>subs/en.vtt</BaseURL></Representation>
    </AdaptationSet>
    <AdaptationSet mimeType="video/mp4">
      <Representation id="list">
        <SegmentList><Initialization sourceURL="l/i.mp4"/>
          <SegmentURL media="l/1.m4s"/><SegmentURL media="l/2.m4s"/></SegmentList>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>"""


def test_dash_template_timeline_list_and_baseurl() -> None:
    from edgecache.core.manifest import parse_dash

    urls = parse_dash(MPD, "http://video.test/d/manifest.mpd")
    base = "http://video.test/d/"
    assert urls == tuple(
        base + u
        for u in [
            "v360/init.mp4", "v360/seg-00001.m4s", "v360/seg-00002.m4s", "v360/seg-00003.m4s", "v360/seg-00004.m4s",
            "v720/init.mp4", "v720/seg-00001.m4s", "v720/seg-00002.m4s", "v720/seg-00003.m4s", "v720/seg-00004.m4s",
            "a/init.mp4", "a/0.m4s", "a/10.m4s", "a/20.m4s",
            "subs/en.vtt",
            "l/i.mp4", "l/1.m4s", "l/2.m4s",
        ]
    )  # fmt: skip
    only = parse_dash(MPD, "http://video.test/d/manifest.mpd", frozenset({"v720"}))
    assert only is not None
    assert only[0] == base + "v720/init.mp4"
    assert len(only) == 5
    assert parse_dash("<html/>", base) is None
    assert parse_dash("not xml", base) is None


@given(st.text(max_size=300))
def test_dash_never_raises(text: str) -> None:
    from edgecache.core.manifest import parse_dash

    parse_dash(text, "http://video.test/a.mpd")


def test_expand_keeps_its_own_host_each_url_once() -> None:
    body = b"#EXTM3U\n#EXTINF:6,\na.ts\n#EXTINF:6,\na.ts\n#EXTINF:6,\nhttp://evil.test/b.ts\n#EXTINF:6,\n//[x\n"
    assert expand("http://video.test/v/index.m3u8", body) == ("http://video.test/v/a.ts",)
    assert expand("http://video.test/v/index.m3u8", b"\xff\xfe not a playlist") == ()


class CostedList(list[str]):
    """A job's URL list that charges each membership test what a list pays for it: one look per element."""

    cost = 0

    def __contains__(self, item: object) -> bool:
        CostedList.cost += len(self)
        return super().__contains__(item)


def test_expanding_a_large_ladder_is_linear(tmp_path: Path) -> None:
    """8 renditions of 3,000 segments each (the ladder that stalled worker 0's hits for 1.25 s): admitting them
    into a job costs a bounded number of looks per URL, not a look at every URL already in the job."""
    renditions, segments = 8, 3000
    disk = DiskTier(tmp_path / "d", 2**20)
    try:
        runner = JobRunner(disk, "http://127.0.0.1:1")
        job = Job(id="j", owner="ops", urls=CostedList(["http://video.test/master.m3u8"]))
        CostedList.cost = 0
        added = 0
        for r in range(renditions):
            media = "#EXTM3U\n" + "".join(f"#EXTINF:6,\nseg{i}.ts\n" for i in range(segments))
            found = expand(f"http://video.test/{r}/index.m3u8", media.encode())
            assert found is not None
            assert len(found) == segments
            added += len(runner._admit(job, found))
        assert added == renditions * segments
        assert len(job.urls) == 1 + renditions * segments
        assert CostedList.cost <= 4 * len(job.urls), CostedList.cost  # a list scan per URL would be ~2.9e8
        assert runner._admit(job, found) == []  # the same segments again add nothing
    finally:
        disk.close()


PIECES = ["a", "seg1", ".", "..", "/", "//", ";", "?", "?a", "#", ":", "%2e", "~", "=", "&", "-", "é", " ", "@", "x.ts",
          "\t", "\\", "[", "]", "ſ", "\xa0", "\x00"]  # fmt: skip
BASES = st.builds(
    lambda scheme, host, path, tail: f"{scheme}://{host}{path}{tail}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["video.test", "video.test:8080", "[::1]", "[::1", "u@video.test", "", "h\t"]),
    st.lists(st.sampled_from(PIECES), max_size=6).map("".join).map(lambda p: "/" + p if p else p),
    st.sampled_from(["", "/index.m3u8", "/v/index.m3u8?token=1", "#frag", "/a;p/m.m3u8", "/./m.m3u8"]),
)


@given(BASES, st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join))
def test_joining_a_uri_is_urljoin(base: str, ref: str) -> None:
    """The shortcut for plain segment names resolves exactly as urljoin does, whatever the base and reference."""
    try:
        expected: str | None = urljoin(base, ref)
    except ValueError:
        expected = None
    assert _join(base, ref) == expected


def _peak(call: Callable[[], object]) -> tuple[object, int]:
    """What `call` returns, and the most memory it held at once (bytes, as tracemalloc counts them)."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_manifest_that_makes_too_much_is_refused_not_held() -> None:
    """MAX_SEGMENTS bounded a DASH template's count only, and nothing bounded a playlist's: every URL is the base
    joined with a line, so a 100 KB MPD whose BaseURL was 100,000 characters made 100,000 URLs of 100 KB (9.5 GB
    on the parser's thread) and a 6.6 MB playlist of a million lines under a 4 KB URL, 4 GB. Past MAX_SEGMENTS
    URLs, or MAX_CHARS characters joined, a manifest is refused; a URL past MAX_URL is never one a job could fetch."""
    many = "#EXTM3U\n" + "".join(f"#EXTINF:6,\n{i}.ts\n" for i in range(MAX_SEGMENTS + 1))
    assert expand("http://video.test/v/index.m3u8", many.encode()) is None
    assert len(expand("http://video.test/v/index.m3u8", many.rsplit("#EXTINF", 1)[0].encode()) or ()) == MAX_SEGMENTS
    deep = "http://video.test/" + "d/" * 2500 + "index.m3u8"  # 5 KB: 100,000 of its segments are 500 MB
    found, peak = _peak(lambda: expand(deep, ("#EXTM3U\n" + "".join(f"{i}.ts\n" for i in range(100_000))).encode()))
    assert (found, peak < 2 * MAX_CHARS) == (None, True), peak
    mpd = (
        '<MPD mediaPresentationDuration="PT1000S"><Period><BaseURL>{base}/</BaseURL><AdaptationSet>'
        '<Representation id="r" bandwidth="1"><SegmentTemplate media="$Number$.m4s" duration="1"/>'
        "</Representation></AdaptationSet></Period></MPD>"
    )
    assert len(expand("http://video.test/d/m.mpd", mpd.format(base="b").encode()) or ()) == 1000
    assert expand("http://video.test/d/m.mpd", mpd.format(base="b" * (MAX_URL + 1)).encode()) == ()  # skipped


def test_an_mpd_of_too_many_elements_is_refused_before_its_tree_is_built() -> None:
    """An MPD's tree is ~340 bytes an element: 28.6 MiB of <S d="1"/> took 1 GB to be refused (past MAX_SEGMENTS)
    once built. Past MAX_ELEMENTS it is refused unparsed; a small one is parsed as ever."""
    mpd = (
        '<MPD mediaPresentationDuration="PT10S"><Period><AdaptationSet><Representation id="r" bandwidth="1">'
        '<SegmentTemplate media="$Number$.m4s"><SegmentTimeline>{}</SegmentTimeline></SegmentTemplate>'
        "</Representation></AdaptationSet></Period></MPD>"
    )
    tags = mpd.count("<")
    body = mpd.format('<S d="1"/>' * (MAX_ELEMENTS + 1 - tags)).encode()
    found, peak = _peak(lambda: expand("http://video.test/d/m.mpd", body))
    assert (found, peak < 3 * len(body)) == (None, True), (peak, len(body))
    small = mpd.format('<S d="1"/>' * 3).encode()
    assert expand("http://video.test/d/m.mpd", small) == tuple(f"http://video.test/d/{i}.m4s" for i in (1, 2, 3))
