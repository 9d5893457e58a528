"""What `python -m loadtest.fuzz` found in the core (issue 7), one row per reproducer, each pinned exactly."""

from __future__ import annotations

import time

import pytest

from edgecache.core import manifest
from edgecache.core.cachecontrol import CacheControl, valid_sf_directives
from edgecache.core.freshness import response_cc
from edgecache.core.httpdate import parse_http_date
from edgecache.core.keys import MAX_TARGET, BadTarget, digest, make_key, normalise_target
from edgecache.core.manifest import Playlist, parse_dash, parse_hls
from edgecache.core.ranges import ContentRange, NoRange, RangeSpec, parse_content_range, parse_range_header, resolve
from edgecache.core.route import normalise_host

# --- ASCII only, matched whole: Unicode digits, look-alike letters and a trailing newline are not syntax ------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("bytes=\u0660-\u0669", id="arabic-indic-digits"),
        pytest.param("BYTES=-\u0661", id="suffix-arabic-indic-digit"),
        pytest.param("bytes=\uff10-\uff15", id="fullwidth-digits"),
        pytest.param("bytes=0-5\n", id="trailing-newline"),
        pytest.param("\x1cbytes=0-5", id="unit-with-control-character"),
    ],
)
def test_range_header_is_ascii(header: str) -> None:
    assert parse_range_header(header) is None
    assert resolve(header, 100) == NoRange("absent or ignored")


def test_range_header_spaces_and_tabs_still_allowed() -> None:
    assert parse_range_header(" bytes\t= 0-5 ,\t-3") == (RangeSpec(0, 5), RangeSpec(None, 3))


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("byte\u017f */0", None, id="long-s-in-unit"),
        pytest.param("bytes 0-1/\uff12", None, id="fullwidth-length"),
        pytest.param("bytes 0-1/2\n", None, id="trailing-newline"),
        pytest.param(" BYTES 0-1/2\t", ContentRange(0, 1, 2), id="case-and-ows-still-allowed"),
    ],
)
def test_content_range_is_ascii(value: str, want: ContentRange | None) -> None:
    assert parse_content_range(value) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", None, id="arabic-indic-day"),
        pytest.param("Tue, 11 Jan \uff10066 22:01:22 GMT", None, id="fullwidth-year"),
        pytest.param("Sun, 06 \u017fep 1994 08:49:37 GMT", None, id="long-s-month"),
        pytest.param("\u017fun, 06 Nov 1994 08:49:37 GMT", None, id="long-s-day-name"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT\n", None, id="trailing-newline"),
        pytest.param("\u3000Sun, 06 Nov 1994 08:49:37 GMT", None, id="ideographic-space"),
        pytest.param(" Sun, 06 NOV 1994 08:49:37 gmt\t", 784111777.0, id="case-and-ows-still-allowed"),
    ],
)
def test_http_date_is_ascii(value: str, want: float | None) -> None:
    assert parse_http_date(value) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("x:\u0661", None, id="arabic-indic-port"),
        pytest.param("\u3000video.test", None, id="ideographic-space"),
        pytest.param("video.test\n", None, id="trailing-newline"),
        pytest.param(" Video.Test.:8080\t", "video.test", id="case-port-ows-still-allowed"),
    ],
)
def test_host_is_ascii(value: str, want: str | None) -> None:
    assert normalise_host(value) == want


@pytest.mark.parametrize(
    ("values", "want"),
    [
        pytest.param(["max-age=\u0661\u0662"], False, id="arabic-indic-integer"),
        pytest.param(["max-age=5\n"], False, id="trailing-newline"),
        pytest.param(["\nm"], False, id="leading-newline-key"),
        pytest.param(['a="caf\u00e9"'], False, id="non-ascii-string"),
        pytest.param(['max-age=60, a="x\\"y";p=?1'], True, id="escapes-and-params-still-valid"),
    ],
)
def test_cdn_cache_control_is_ascii(values: list[str], want: bool) -> None:
    assert valid_sf_directives(values) is want


def test_invalid_cdn_cache_control_falls_back_to_cache_control() -> None:
    # RFC 9213: a CDN-Cache-Control that is not a valid Structured Field is ignored, Cache-Control applies.
    headers = (("Cache-Control", "max-age=600"), ("CDN-Cache-Control", "max-age=\u0661\u0662"))
    assert response_cc(headers) == (CacheControl(max_age=600), False)


# --- cache keys --------------------------------------------------------------------------------------------


def test_trailing_newline_in_target_is_refused() -> None:
    with pytest.raises(BadTarget) as exc:
        make_key("s", "h", "/a\n", ["*"])
    assert str(exc.value) == "request target has control characters or spaces"


@pytest.mark.parametrize(
    ("target", "want"),
    [
        pytest.param("/%%34%31", ("/%2541", ""), id="stray-percent-before-decoded-digits"),
        pytest.param("/100%", ("/100%25", ""), id="stray-percent-at-end"),
        pytest.param("/a%2", ("/a%252", ""), id="one-hex-digit"),
        pytest.param("/%zz?x=%", ("/%25zz", "x=%25"), id="stray-percent-in-path-and-query"),
        pytest.param("/%25%41", ("/%25A", ""), id="encoded-percent-stays-encoded"),
    ],
)
def test_stray_percent_is_encoded_so_normalising_is_idempotent(target: str, want: tuple[str, str]) -> None:
    assert normalise_target(target) == want
    path, query = want
    assert normalise_target(f"{path}?{query}" if query else path) == want
    key = make_key("s", "h", target, ["*"])
    assert make_key("s", "h", key.target, ["*"]).primary == key.primary


def test_target_that_normalises_past_the_limit_is_refused() -> None:
    # 2,700 stray '%'s are 8,100 characters and would normalise to 8,100 more: too long for the key's target to be
    # normalised again (a forward or a purge does), so it is refused at once.
    target = "/" + "%/" * 2700
    assert len(target) <= MAX_TARGET
    with pytest.raises(BadTarget) as exc:
        normalise_target(target)
    assert str(exc.value) == "request target too long"
    assert normalise_target("/" + "%" * 2000) == ("/" + "%25" * 2000, "")


def test_digest_of_any_text() -> None:
    assert digest("a") == "27c35e6e9373877f29e562464e46497e"  # unchanged for every encodable text
    assert digest("\udc80\udcff") == "68137c6c2c61e3aa5b04ff1417dee540"  # surrogateescape: unchanged too
    assert digest("\ud800") == "080c8c8e06c3bbe60b58fd4073261d0f"
    # surrogatepass bytes of "\ud800" are the surrogateescape bytes of "\udced\udca0\udc80": kept apart.
    assert digest("\ud800") != digest("\udced\udca0\udc80")


# --- manifests (origin input: never raise) -----------------------------------------------------------------

BASE = "http://v.test/a/list.m3u8"


def test_hls_skips_uris_that_do_not_resolve() -> None:
    text = '#EXTM3U\n#EXT-X-MAP:URI="//["\n#EXTINF:6,\n//[\n#EXTINF:6,\nok.ts'
    assert parse_hls(text, BASE) == Playlist(False, (), ("http://v.test/a/ok.ts",))
    master = (
        '#EXTM3U\n#EXT-X-MEDIA:URI="//]"\n#EXT-X-STREAM-INF:BANDWIDTH=1\n//[\n#EXT-X-STREAM-INF:BANDWIDTH=2\nhi.m3u8'
    )
    assert parse_hls(master, BASE) == Playlist(True, ("http://v.test/a/hi.m3u8",), ())


def mpd(template: str, duration: str = "PT4S", base: str = "") -> str:
    return (
        f'<MPD mediaPresentationDuration="{duration}"><Period><AdaptationSet>{base}<Representation id="r" '
        f'bandwidth="8">{template}</Representation></AdaptationSet></Period></MPD>'
    )


MPD_BASE = "http://v.test/m/a.mpd"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param("\ud800", None, id="lone-surrogate"),
        pytest.param(
            mpd('<SegmentTemplate initialization="i.mp4" media="$Number$" startNumber="x" duration="1"/>'),
            ("http://v.test/m/i.mp4",),
            id="start-number-not-a-number",
        ),
        pytest.param(
            mpd('<SegmentTemplate initialization="i.mp4" media="$Number$" timescale="" duration="1"/>'),
            ("http://v.test/m/i.mp4",),
            id="timescale-empty",
        ),
        pytest.param(
            mpd('<SegmentTemplate initialization="i.mp4" media="$Number$" duration="1"/>', "PT" + "9" * 400 + "S"),
            ("http://v.test/m/i.mp4",),
            id="duration-overflows-to-inf",
        ),
        pytest.param(
            mpd(
                '<SegmentTemplate media="$Time$"><SegmentTimeline><S t="0" d="2" r="1"/><S d=""/><S d="2"/>'
                "</SegmentTimeline></SegmentTemplate>"
            ),
            ("http://v.test/m/0", "http://v.test/m/2"),
            id="timeline-stops-at-a-bad-entry",
        ),
        pytest.param(
            mpd('<SegmentTemplate initialization="//[" media="//[$Number$" duration="2"/>'),
            (),
            id="template-urls-that-do-not-resolve",
        ),
        pytest.param(
            mpd('<SegmentList><Initialization sourceURL="//["/><SegmentURL media="//["/><SegmentURL media="s1"/>'),
            None,
            id="unclosed-segment-list-is-not-xml",
        ),
        pytest.param(
            mpd(
                '<SegmentList><Initialization sourceURL="//["/><SegmentURL media="//["/><SegmentURL media="s1"/>'
                "</SegmentList>"
            ),
            ("http://v.test/m/s1",),
            id="segment-list-urls-that-do-not-resolve",
        ),
        pytest.param(
            mpd("<BaseURL>v.mp4</BaseURL>", base="<BaseURL>//[</BaseURL>"), ("http://v.test/m/v.mp4",), id="base-url"
        ),
        pytest.param(
            mpd('<SegmentTemplate initialization="i.mp4" media="s$Number%0999999999d$" duration="1"/>'),
            ("http://v.test/m/i.mp4",),
            id="gigabyte-width-refused",
        ),
        pytest.param(
            mpd('<SegmentTemplate media="s$Number%032d$" duration="2"/>'),
            ("http://v.test/m/s" + "1".zfill(32), "http://v.test/m/s" + "2".zfill(32)),
            id="width-32-still-padded",
        ),
    ],
)
def test_dash_never_raises(text: str, want: tuple[str, ...] | None) -> None:
    start = time.perf_counter()
    assert parse_dash(text, MPD_BASE) == want
    assert time.perf_counter() - start < 1.0


def test_dash_segment_count_that_overflows_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_SEGMENTS", 10)
    # 10**300 seconds times a timescale of 10**17 is inf segments (math.ceil would raise): capped at MAX_SEGMENTS.
    text = mpd(
        '<SegmentTemplate media="$Number$" timescale="100000000000000000" duration="1"/>', "PT1" + "0" * 300 + "S"
    )
    assert parse_dash(text, MPD_BASE) == tuple(f"http://v.test/m/{n}" for n in range(1, 11))
